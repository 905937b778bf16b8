"""A real sidecar against malformed, hostile and out-of-order input on raw sockets.

Every fault must be refused with the right typed error (or, for bytes that are not a genart
frame at all, by closing at once without a word), and the server must go on serving: a new
client connects and pings, and a client connected before the faults still pings.
"""

from __future__ import annotations

import json
import os
import random
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genart_core.protocol import Client
from genart_core.protocol import messages as m
from genart_core.protocol.framing import (
    HEADER,
    MAGIC,
    MAX_JSON_BYTES,
    MAX_PAYLOAD_BYTES,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Attachment,
    FrameStream,
    encode_parts,
)

pytestmark = pytest.mark.process

IO_TIMEOUT = 5.0


# -- helpers ---------------------------------------------------------------------------
def raw_connect(sidecar: Any) -> socket.socket:
    sock = sidecar.info.address.connect()
    sock.settimeout(IO_TIMEOUT)
    return sock


def header(json_len: int, payload_len: int = 0, *, major: int = PROTOCOL_MAJOR) -> bytes:
    return HEADER.pack(MAGIC, major, PROTOCOL_MINOR, 0, json_len, payload_len)


def send(
    sock: socket.socket, envelope: dict[str, Any], attachments: list[Attachment] | tuple[()] = ()
) -> None:
    for part in encode_parts(envelope, attachments):
        sock.sendall(part)


def send_request(
    sock: socket.socket, req_id: Any, method: str, params: dict[str, Any] | None = None
) -> None:
    send(sock, m.request(req_id, method, params))


def read_one(sock: socket.socket) -> dict[str, Any]:
    """Reads one whole response frame and returns its envelope."""
    env = FrameStream(sock).read_message().envelope
    assert env.get("jsonrpc") == "2.0", env
    return env


def raw_hello(
    sock: socket.socket,
    token: str | None,
    *,
    req_id: Any = 1,
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sends hello over a raw socket and returns the response envelope."""
    params: dict[str, Any] = {
        "protocol": protocol or {"min": PROTOCOL_MAJOR, "max": PROTOCOL_MAJOR},
        "client": {"name": "test_protocol_faults"},
    }
    if token is not None:
        params["token"] = token
    send_request(sock, req_id, "hello", params)
    return read_one(sock)


def authed(sidecar: Any) -> socket.socket:
    """A raw socket that has done a successful hello."""
    sock = raw_connect(sidecar)
    env = raw_hello(sock, sidecar.info.token)
    assert "result" in env, env
    assert env["id"] == 1
    return sock


def expect_error(
    env: dict[str, Any], name: str, code: int, *, req_id: Any = None
) -> dict[str, Any]:
    """Checks an error response; returns its `data`."""
    assert "result" not in env, env
    assert "error" in env, env
    err = env["error"]
    assert err["data"]["name"] == name, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    assert env.get("id") == req_id, env
    return err["data"]


def expect_closed(sock: socket.socket) -> None:
    """The server closed the connection: the next read hits end of stream."""
    assert sock.recv(1) == b""


def ping_on(sock: socket.socket, req_id: int) -> None:
    """The same raw connection still answers a request."""
    send_request(sock, req_id, "ping")
    env = read_one(sock)
    assert env.get("id") == req_id, env
    assert "time" in env["result"], env


@pytest.fixture(scope="module")
def long_client(sidecar: Any) -> Iterator[Client]:
    """A client connected before any fault; it must survive them all."""
    c = sidecar.connect()
    yield c
    c.close()


@pytest.fixture
def serving(sidecar: Any, long_client: Client):
    """Call it at the end of a test: the server still serves new and old clients."""

    def check() -> None:
        with sidecar.connect() as fresh:
            assert "time" in fresh.ping()
        assert "time" in long_client.ping()
        assert sidecar.proc.poll() is None

    return check


# -- handshake -------------------------------------------------------------------------
def test_wrong_token_is_unauthorized_and_closed(sidecar, serving) -> None:
    with raw_connect(sidecar) as sock:
        env = raw_hello(sock, "0" * 64, req_id=41)
        data = expect_error(env, "unauthorized", -32001, req_id=41)
        assert data.get("field") == "token"
        assert sidecar.info.token not in json.dumps(env)
        expect_closed(sock)
    serving()


def test_missing_token_is_unauthorized_and_closed(sidecar, serving) -> None:
    with raw_connect(sidecar) as sock:
        env = raw_hello(sock, None, req_id=42)
        data = expect_error(env, "unauthorized", -32001, req_id=42)
        assert data.get("field") == "token"
        expect_closed(sock)
    serving()


def test_non_string_token_is_unauthorized(sidecar, serving) -> None:
    with raw_connect(sidecar) as sock:
        send_request(sock, 43, "hello", {"token": 12345})
        expect_error(read_one(sock), "unauthorized", -32001, req_id=43)
        expect_closed(sock)
    serving()


@pytest.mark.parametrize("method", ["ping", "list", "submit", "shutdown", "frobnicate"])
def test_request_before_hello_is_unauthorized_and_closed(sidecar, serving, method) -> None:
    with raw_connect(sidecar) as sock:
        send_request(sock, 7, method, {"engine": "fake"})
        data = expect_error(read_one(sock), "unauthorized", -32001, req_id=7)
        assert data.get("field") == "method"
        assert data.get("allowed") == ["hello"]
        expect_closed(sock)
    serving()


def test_protocol_range_without_major_1_is_version_mismatch(sidecar, serving) -> None:
    with raw_connect(sidecar) as sock:
        env = raw_hello(sock, sidecar.info.token, req_id=44, protocol={"min": 2, "max": 3})
        data = expect_error(env, "version_mismatch", -32002, req_id=44)
        assert data.get("allowed") == [1]
        assert data.get("field") == "protocol"
        expect_closed(sock)
    serving()


def test_frame_header_major_2_is_version_mismatch_and_closed(sidecar, serving) -> None:
    with raw_connect(sidecar) as sock:
        body = json.dumps(m.request(45, "hello", {"token": sidecar.info.token})).encode()
        sock.sendall(header(len(body), major=2) + body)
        data = expect_error(read_one(sock), "version_mismatch", -32002, req_id=45)
        assert data.get("allowed") == [1]
        expect_closed(sock)
    serving()


def test_second_hello_is_invalid_params_and_connection_stays(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        send_request(sock, 2, "hello", {"token": sidecar.info.token})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=2)
        assert data.get("field") == "method"
        ping_on(sock, 3)
    serving()


# -- bytes that are not genart frames ---------------------------------------------------
def test_http_request_is_closed_at_once_without_reply(sidecar, serving) -> None:
    with raw_connect(sidecar) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # No shutdown from our side: the server must hang up by itself, soon, and say
        # nothing. It reads only the 4-byte magic, so it closes with the rest of the request
        # unread and the kernel reports a reset (ECONNRESET) rather than a clean EOF: both
        # are a hang-up; any byte back is a failure, and so is a timeout.
        sock.settimeout(2.0)
        try:
            got = sock.recv(4096)
        except ConnectionResetError:
            got = b""
        assert got == b""
    serving()


def test_oversized_json_len_is_frame_too_large_and_closed(sidecar, serving) -> None:
    declared = 100 * 1024 * 1024
    assert declared > MAX_JSON_BYTES
    with raw_connect(sidecar) as sock:
        sock.sendall(header(declared, 0))  # the header alone: nothing is allocated
        data = expect_error(read_one(sock), "frame_too_large", -32003, req_id=None)
        assert data.get("field") == "json_len"
        expect_closed(sock)
    serving()


def test_oversized_payload_len_is_frame_too_large_and_closed(sidecar, serving) -> None:
    declared = MAX_PAYLOAD_BYTES + 1
    with raw_connect(sidecar) as sock:
        sock.sendall(header(10, declared))
        data = expect_error(read_one(sock), "frame_too_large", -32003, req_id=None)
        assert data.get("field") == "payload_len"
        expect_closed(sock)
    serving()


def test_truncated_frame_closes_the_connection(sidecar, serving) -> None:
    with raw_connect(sidecar) as sock:
        sock.sendall(header(100) + b'{"jsonrpc"')
        sock.shutdown(socket.SHUT_WR)
        data = expect_error(read_one(sock), "bad_frame", -32004, req_id=None)
        assert data.get("field") is None
        expect_closed(sock)
    serving()


def test_truncated_frame_after_hello_closes_the_connection(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        parts = encode_parts(m.request(5, "echo"), [Attachment.blob("b", b"x" * 64, "raw")])
        sock.sendall(parts[0] + parts[1] + bytes(parts[2])[:20])
        sock.shutdown(socket.SHUT_WR)
        env = read_one(sock)
        expect_error(env, "bad_frame", -32004, req_id=None)
        assert "truncated" in env["error"]["message"]
        expect_closed(sock)
    serving()


# -- bad envelopes on an authenticated connection: the stream stays in step --------------
def test_garbage_json_is_parse_error_and_connection_keeps_working(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        junk = b"{this is: not json,,"
        sock.sendall(header(len(junk)) + junk)
        expect_error(read_one(sock), "parse_error", -32700, req_id=None)
        ping_on(sock, 2)
        # Garbage JSON with a payload: the payload is skipped, the stream stays in step.
        sock.sendall(header(len(junk), 16) + junk + b"\x00" * 16)
        expect_error(read_one(sock), "parse_error", -32700, req_id=None)
        ping_on(sock, 3)
        # Bytes that are not UTF-8 at all.
        bad = b"\xff\xfe\x00\x80"
        sock.sendall(header(len(bad)) + bad)
        expect_error(read_one(sock), "parse_error", -32700, req_id=None)
        ping_on(sock, 4)
    serving()


@pytest.mark.parametrize("body", [b"[1,2]", b"42", b'"ping"', b"null"])
def test_non_object_json_is_invalid_request_and_connection_keeps_working(
    sidecar, serving, body
) -> None:
    with authed(sidecar) as sock:
        sock.sendall(header(len(body)) + body)
        expect_error(read_one(sock), "invalid_request", -32600, req_id=None)
        ping_on(sock, 2)
    serving()


def test_envelope_without_jsonrpc_is_invalid_request(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        send(sock, {"id": 9, "method": "ping"})
        data = expect_error(read_one(sock), "invalid_request", -32600, req_id=9)
        assert data.get("field") == "jsonrpc"
        assert data.get("allowed") == ["2.0"]
        send(sock, {"jsonrpc": "2.0", "id": 10, "method": "ping", "params": [1]})
        data = expect_error(read_one(sock), "invalid_request", -32600, req_id=10)
        assert data.get("field") == "params"
        ping_on(sock, 11)
    serving()


def test_unknown_method_is_method_not_found_and_connection_keeps_working(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        send_request(sock, 2, "frobnicate", {})
        data = expect_error(read_one(sock), "method_not_found", -32601, req_id=2)
        assert data.get("field") == "method"
        allowed = data.get("allowed")
        assert isinstance(allowed, list) and allowed == sorted(allowed)
        assert set(m.METHODS) - {"hello"} <= set(allowed)
        assert "hello" not in allowed
        ping_on(sock, 3)
    serving()


def test_failed_notification_gets_no_reply(sidecar, serving) -> None:
    """A request without an id is a notification: even its error is not answered."""
    with authed(sidecar) as sock:
        send(sock, {"jsonrpc": "2.0", "method": "frobnicate"})
        ping_on(sock, 2)  # the very next frame is the ping's answer
    serving()


def test_attachment_sizes_not_adding_up_is_bad_frame(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        env = {
            **m.request(12, "echo"),
            "attachments": [{"name": "b", "kind": "blob", "encoding": "raw", "nbytes": 10}],
        }
        body = json.dumps(env).encode()
        sock.sendall(header(len(body), 4) + body + b"abcd")
        data = expect_error(read_one(sock), "bad_frame", -32004, req_id=12)
        assert data.get("field") == "attachments.nbytes"
        expect_closed(sock)  # a framing error closes the connection
    serving()


# -- bad params --------------------------------------------------------------------------
def test_submit_unknown_engine_is_invalid_params(sidecar, serving, long_client) -> None:
    before = long_client.ping()["jobs"]
    with authed(sidecar) as sock:
        send_request(sock, 2, "submit", {"engine": "nope"})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=2)
        assert data.get("field") == "engine"
        allowed = data.get("allowed")
        assert "fake" in allowed and "sd" in allowed and allowed == sorted(allowed)
        send_request(sock, 3, "submit", {})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=3)
        assert data.get("field") == "engine"
        ping_on(sock, 4)
    assert long_client.ping()["jobs"] == before  # nothing was queued
    serving()


def test_submit_out_of_range_param_names_the_param(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        send_request(sock, 2, "submit", {"engine": "fake", "params": {"steps": 0}})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=2)
        assert data.get("field") == "params.steps"
        assert data.get("allowed") == {"min": 1, "max": 10000}
        send_request(sock, 3, "submit", {"engine": "fake", "params": {"steps": "eight"}})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=3)
        assert data.get("field") == "params.steps"
        ping_on(sock, 4)
    serving()


def test_submit_unknown_param_names_the_param(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        send_request(sock, 2, "submit", {"engine": "fake", "params": {"colour": "red"}})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=2)
        assert data.get("field") == "params.colour"
        assert "steps" in data.get("allowed", [])
        send_request(sock, 3, "submit", {"engine": "fake", "params": {"mode": "explode"}})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=3)
        assert data.get("field") == "params.mode"
        assert "ok" in data.get("allowed", [])
        ping_on(sock, 4)
    serving()


def test_list_bad_state_is_invalid_params(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        send_request(sock, 2, "list", {"state": "bogus"})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=2)
        assert data.get("field") == "state"
        assert data.get("allowed") == list(m.JOB_STATES)
        send_request(sock, 3, "list", {"limit": 0})
        data = expect_error(read_one(sock), "invalid_params", -32602, req_id=3)
        assert data.get("field") == "limit"
        ping_on(sock, 4)
    serving()


def test_status_of_unknown_job_is_job_not_found(sidecar, serving) -> None:
    with authed(sidecar) as sock:
        send_request(sock, 2, "status", {"job": "no-such-job"})
        data = expect_error(read_one(sock), "job_not_found", -32010, req_id=2)
        assert data.get("field") == "job"
        ping_on(sock, 3)
    serving()


# -- files and permissions ---------------------------------------------------------------
def test_connection_file_is_private(sidecar) -> None:
    mode = stat.S_IMODE(os.stat(sidecar.connection_file).st_mode)
    assert mode == 0o600, oct(mode)


def test_socket_folder_is_private(sidecar) -> None:
    info = sidecar.info
    if info.transport != "unix":
        pytest.fail(f"expected a Unix socket on this platform, got {info.transport}")
    sock_path = Path(info.path)
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    folder_mode = stat.S_IMODE(os.stat(sock_path.parent).st_mode)
    assert folder_mode == 0o700, oct(folder_mode)
    sock_mode = stat.S_IMODE(os.stat(sock_path).st_mode)
    assert sock_mode & 0o077 == 0, oct(sock_mode)


def test_token_is_not_on_the_command_line(sidecar) -> None:
    cmdline = Path(f"/proc/{sidecar.proc.pid}/cmdline")
    if not cmdline.exists():
        pytest.fail("no /proc on this platform")
    assert sidecar.info.token.encode() not in cmdline.read_bytes()


# -- a flood of junk ---------------------------------------------------------------------
def _drain_until_closed(sock: socket.socket) -> None:
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return
        if not chunk:
            return


def test_many_garbage_connections_in_a_row(sidecar, serving) -> None:
    rng = random.Random(1234)
    for i in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        if i % 3 == 1:  # a real magic, then junk: goes deeper into the header checks
            junk = MAGIC + bytes([PROTOCOL_MAJOR]) + junk
        elif i % 3 == 2:  # a sane header, then junk as JSON
            junk = header(len(junk)) + junk
        with raw_connect(sidecar) as sock:
            try:
                sock.sendall(junk)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may already have hung up
            _drain_until_closed(sock)  # a timeout here (server never hangs up) fails
    serving()
