"""Pins the protocol's error codes and names, and unit-tests the binary framing.

Codes and names cross the wire: a client older or newer than the sidecar maps them back to
classes, so renumbering or renaming one is a protocol break. The table below is literal on
purpose; it must be edited by hand, together with docs/protocol.md, when an error is added.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator

import pytest

from genart_core.engines.base import Cancelled
from genart_core.protocol import errors as E
from genart_core.protocol.framing import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Attachment,
    FrameStream,
    Limits,
    encode_parts,
)

# (class, code, name) - literal, never computed from the classes themselves.
ERROR_TABLE: list[tuple[type[E.GenartError], int, str]] = [
    (E.GenartError, -32000, "error"),
    (E.ParseError, -32700, "parse_error"),
    (E.InvalidRequest, -32600, "invalid_request"),
    (E.MethodNotFound, -32601, "method_not_found"),
    (E.InvalidParams, -32602, "invalid_params"),
    (E.InternalError, -32603, "internal_error"),
    (E.Unauthorized, -32001, "unauthorized"),
    (E.VersionMismatch, -32002, "version_mismatch"),
    (E.FrameTooLarge, -32003, "frame_too_large"),
    (E.BadFrame, -32004, "bad_frame"),
    (E.ConnectionLost, -32005, "connection_lost"),
    (E.SidecarUnresponsive, -32006, "sidecar_unresponsive"),
    (E.RequestTimeout, -32007, "request_timeout"),
    (E.JobNotFound, -32010, "job_not_found"),
    (E.NotReady, -32011, "not_ready"),
    (E.JobStateError, -32012, "job_state"),
    (E.ResultExpired, -32013, "result_expired"),
    (E.EngineFailed, -32020, "engine_failed"),
    (E.WorkerCrashed, -32021, "worker_crashed"),
    (E.JobCancelled, -32022, "cancelled"),
    (E.OutOfMemory, -32023, "out_of_memory"),
    (Cancelled, -32024, "engine_cancelled"),
    (E.ShuttingDown, -32030, "shutting_down"),
    (E.StateDirLocked, -32031, "state_dir_locked"),
]


# -- the error table -------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "code", "name"), ERROR_TABLE, ids=[row[2] for row in ERROR_TABLE])
def test_error_code_and_name_are_pinned(cls: type[E.GenartError], code: int, name: str) -> None:
    assert cls.code == code
    assert cls.name == name
    err = cls("boom")
    assert err.to_dict()["code"] == code
    assert err.to_dict()["data"]["name"] == name


def test_error_codes_and_names_are_unique() -> None:
    codes = [code for _, code, _ in ERROR_TABLE]
    names = [name for _, _, name in ERROR_TABLE]
    assert len(set(codes)) == len(codes), sorted(c for c in codes if codes.count(c) > 1)
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)
    classes = [cls for cls, _, _ in ERROR_TABLE]
    assert len(set(classes)) == len(classes)


def test_every_project_error_class_is_in_the_table() -> None:
    """A new error class of the project must be added to the pinned table."""
    registered = {
        name: cls
        for name, cls in E.error_classes().items()
        if cls.__module__.startswith(("genart_core", "sidecar"))
    }
    table = {name: cls for cls, _, name in ERROR_TABLE}
    assert registered == table


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(TypeError, match="registered twice"):
        type("Dup", (E.GenartError,), {"code": -39999, "name": "bad_frame"})
    assert E.error_classes()["bad_frame"] is E.BadFrame


@pytest.mark.parametrize(("cls", "code", "name"), ERROR_TABLE, ids=[row[2] for row in ERROR_TABLE])
def test_error_round_trips_through_dict(cls: type[E.GenartError], code: int, name: str) -> None:
    err = cls(
        "something is wrong",
        field="params.steps",
        allowed={"min": 1, "max": 10},
        details={"got": 0, "where": ["a", "b"]},
    )
    wire = json.loads(json.dumps(err.to_dict()))  # what really crosses: JSON
    assert wire == {
        "code": code,
        "message": "something is wrong",
        "data": {
            "name": name,
            "field": "params.steps",
            "allowed": {"min": 1, "max": 10},
            "details": {"got": 0, "where": ["a", "b"]},
        },
    }
    back = E.GenartError.from_dict(wire)
    assert type(back) is cls
    assert back.code == code and back.name == name
    assert back.message == "something is wrong"
    assert back.field == "params.steps"
    assert back.allowed == {"min": 1, "max": 10}
    assert back.details == {"got": 0, "where": ["a", "b"]}


def test_error_round_trip_without_optional_parts() -> None:
    err = E.JobNotFound("no job 'x'")
    wire = err.to_dict()
    assert wire == {"code": -32010, "message": "no job 'x'", "data": {"name": "job_not_found"}}
    back = E.GenartError.from_dict(wire)
    assert type(back) is E.JobNotFound
    assert back.field is None and back.allowed is None and back.details == {}


def test_allowed_list_round_trips() -> None:
    back = E.GenartError.from_dict(
        E.InvalidParams("bad engine", field="engine", allowed=["fake"]).to_dict()
    )
    assert type(back) is E.InvalidParams
    assert back.allowed == ["fake"]
    assert str(back) == "bad engine (field: engine; allowed: ['fake'])"


@pytest.mark.parametrize(
    "obj",
    [
        {"code": -32099, "message": "from the future", "data": {"name": "no_such_error"}},
        {"code": -32099, "message": "from the future", "data": {}},
        {"code": -32099, "message": "from the future"},
    ],
)
def test_unknown_error_name_gives_plain_genart_error(obj: dict) -> None:
    back = E.GenartError.from_dict(obj)
    assert type(back) is E.GenartError
    assert back.message == "from the future"
    assert back.code == -32000 and back.name == "error"


# -- framing over a real socket pair -----------------------------------------------------
@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def _header(
    json_len: int, payload_len: int, magic: bytes = MAGIC, major: int = PROTOCOL_MAJOR
) -> bytes:
    return HEADER.pack(magic, major, PROTOCOL_MINOR, 0, json_len, payload_len)


def test_header_layout_is_pinned() -> None:
    assert HEADER_SIZE == 20
    assert HEADER.format == "!4sBBHIQ"
    assert MAGIC == b"GART"
    parts = encode_parts({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    magic, major, minor, flags, json_len, payload_len = struct.unpack("!4sBBHIQ", parts[0])
    assert (magic, major, minor, flags) == (b"GART", 1, 0, 0)
    assert json_len == len(parts[1])
    assert payload_len == 0
    assert json.loads(bytes(parts[1])) == {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def test_message_with_array_blob_and_path_round_trips(pair) -> None:
    a, b = pair
    pixels = bytes((i * 7) & 255 for i in range(2 * 3 * 4 * 4))  # 2x3 RGBA float32
    blob = b"\x89PNG\r\n\x1a\n" + b"\x00\xff" * 50
    atts = [
        Attachment.array("image", pixels, "float32", (2, 3, 4), color_space="linear"),
        Attachment.blob("mask", blob, encoding="png"),
        Attachment.file_path("depth", "/tmp/some/depth.exr", encoding="exr"),
    ]
    env = {"jsonrpc": "2.0", "id": 7, "method": "echo", "params": {"x": "é"}}
    FrameStream(a).write_message(env, atts)
    msg = FrameStream(b).read_message()
    assert msg.envelope == env  # "attachments" is taken out of the envelope
    assert [x.name for x in msg.attachments] == ["image", "mask", "depth"]
    image, mask, depth = msg.attachments
    assert image.kind == "array" and image.dtype == "float32" and image.shape == (2, 3, 4)
    assert image.color_space == "linear"
    assert bytes(image.data) == pixels
    assert mask.kind == "blob" and mask.encoding == "png" and bytes(mask.data) == blob
    assert depth.kind == "path" and depth.path == "/tmp/some/depth.exr"
    assert depth.encoding == "exr" and depth.data is None
    assert msg.attachment("mask") is mask
    assert msg.attachment("nope") is None


def test_numpy_array_attachment_round_trips(pair) -> None:
    np = pytest.importorskip("numpy")
    a, b = pair
    arr = np.arange(5 * 6 * 4, dtype=np.float32).reshape(5, 6, 4)
    FrameStream(a).write_message({"id": 1}, [Attachment.array("img", arr, "float32", arr.shape)])
    att = FrameStream(b).read_message().attachments[0]
    got = np.frombuffer(att.data, dtype=np.dtype(att.dtype)).reshape(att.shape)
    assert np.array_equal(got, arr)


def test_several_frames_stay_in_step(pair) -> None:
    a, b = pair
    w, r = FrameStream(a), FrameStream(b)
    for i in range(5):
        w.write_message({"id": i}, [Attachment.blob("b", bytes([i]) * (i + 1), "raw")])
    for i in range(5):
        msg = r.read_message()
        assert msg.envelope == {"id": i}
        assert bytes(msg.attachments[0].data) == bytes([i]) * (i + 1)


def test_array_size_mismatch_is_refused_when_built() -> None:
    with pytest.raises(E.BadFrame) as info:
        Attachment.array("img", b"\x00" * 10, "float32", (2, 2))
    assert info.value.field == "attachments.shape"
    assert "img" in info.value.message


def test_array_size_mismatch_is_refused_when_read(pair) -> None:
    a, b = pair
    env = {
        "jsonrpc": "2.0",
        "id": 3,
        "attachments": [
            {
                "name": "img",
                "kind": "array",
                "dtype": "float32",
                "shape": [2, 2],
                "color_space": "linear",
                "nbytes": 12,
            }
        ],
    }
    body = json.dumps(env).encode()
    a.sendall(_header(len(body), 12) + body + b"\x01" * 12)
    with pytest.raises(E.BadFrame) as info:
        FrameStream(b).read_message()
    assert info.value.field == "attachments.shape"
    assert info.value.request_id == 3


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(E.BadFrame) as info:
        Attachment.array("img", b"\x00" * 8, "float64", (1,))
    assert info.value.field == "attachments.dtype"
    assert "float32" in info.value.allowed


def test_non_contiguous_memoryview_is_refused(pair) -> None:
    a, b = pair
    view = memoryview(bytearray(32))[::2]
    assert not view.contiguous
    # An array checks its size, so it is refused as soon as it is built.
    with pytest.raises(E.BadFrame) as info:
        Attachment.array("a", view, "uint8", (16,))
    assert info.value.field == "attachments.data"
    # A blob is refused when encoded, before a single byte goes on the wire.
    blob = Attachment.blob("b", view, encoding="raw")
    with pytest.raises(E.BadFrame) as info:
        encode_parts({"id": 1}, [blob])
    assert info.value.field == "attachments.data"
    with pytest.raises(E.BadFrame):
        FrameStream(a).write_message({"id": 1}, [blob])
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        b.recv(1)


def test_json_cap_raises_frame_too_large(pair) -> None:
    a, b = pair
    FrameStream(a).write_message({"id": 1, "pad": "x" * 200})
    with pytest.raises(E.FrameTooLarge) as info:
        FrameStream(b, limits=Limits(max_json=64)).read_message()
    assert info.value.field == "json_len"


def test_payload_cap_raises_frame_too_large(pair) -> None:
    a, b = pair
    FrameStream(a).write_message({"id": 1}, [Attachment.blob("b", b"\x00" * 100, "raw")])
    with pytest.raises(E.FrameTooLarge) as info:
        FrameStream(b, limits=Limits(max_payload=99)).read_message()
    assert info.value.field == "payload_len"


def test_caps_are_checked_before_reading_the_body(pair) -> None:
    """A huge declared length is refused from the header alone (nothing else is sent)."""
    a, b = pair
    a.sendall(_header(2**32 - 1, 0))
    with pytest.raises(E.FrameTooLarge):
        FrameStream(b, limits=Limits(max_json=1024)).read_message()
    a.sendall(_header(2, 2**63))
    with pytest.raises(E.FrameTooLarge):
        FrameStream(b).read_message()


def test_payload_exactly_at_the_cap_is_accepted(pair) -> None:
    a, b = pair
    FrameStream(a).write_message({"id": 1}, [Attachment.blob("b", b"\x00" * 100, "raw")])
    msg = FrameStream(b, limits=Limits(max_payload=100)).read_message()
    assert msg.attachments[0].nbytes == 100


def test_bad_magic_raises_bad_frame(pair) -> None:
    a, b = pair
    a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(E.BadFrame) as info:
        FrameStream(b).read_message()
    assert "bad magic" in info.value.message


def test_eof_at_frame_boundary_raises_connection_lost(pair) -> None:
    a, b = pair
    FrameStream(a).write_message({"id": 1})
    a.shutdown(socket.SHUT_WR)
    r = FrameStream(b)
    assert r.read_message().envelope == {"id": 1}
    with pytest.raises(E.ConnectionLost):
        r.read_message()


def test_eof_mid_frame_raises_truncated_bad_frame(pair) -> None:
    a, b = pair
    a.sendall(_header(100, 0) + b'{"id": 1, ')
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(E.BadFrame) as info:
        FrameStream(b).read_message()
    assert not isinstance(info.value, E.ConnectionLost)
    assert "truncated" in info.value.message


def test_eof_mid_header_raises_truncated_bad_frame(pair) -> None:
    a, b = pair
    a.sendall(MAGIC + b"\x01\x00")
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(E.BadFrame) as info:
        FrameStream(b).read_message()
    assert "truncated" in info.value.message


def test_eof_mid_payload_raises_truncated_bad_frame(pair) -> None:
    a, b = pair
    parts = encode_parts({"id": 1}, [Attachment.blob("b", b"\x07" * 64, "raw")])
    a.sendall(parts[0] + parts[1] + bytes(parts[2])[:10])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(E.BadFrame) as info:
        FrameStream(b).read_message()
    assert "truncated" in info.value.message


def test_bad_json_is_skipped_and_the_stream_stays_in_step(pair) -> None:
    a, b = pair
    junk = b"{not json"
    a.sendall(_header(len(junk), 5) + junk + b"12345")
    FrameStream(a).write_message({"id": 2})
    r = FrameStream(b)
    with pytest.raises(E.ParseError):
        r.read_message()
    assert r.read_message().envelope == {"id": 2}


def test_sizes_not_adding_up_raise_bad_frame(pair) -> None:
    a, b = pair
    env = {"id": 9, "attachments": [{"name": "b", "kind": "blob", "encoding": "raw", "nbytes": 10}]}
    body = json.dumps(env).encode()
    a.sendall(_header(len(body), 4) + body + b"abcd")
    FrameStream(a).write_message({"id": 10})
    r = FrameStream(b)
    with pytest.raises(E.BadFrame) as info:
        r.read_message()
    assert info.value.field == "attachments.nbytes"
    assert info.value.request_id == 9
    assert r.read_message().envelope == {"id": 10}


def test_wrong_major_version_raises_version_mismatch(pair) -> None:
    a, b = pair
    body = b'{"id": 4}'
    a.sendall(_header(len(body), 0, major=2) + body)
    with pytest.raises(E.VersionMismatch) as info:
        FrameStream(b).read_message()
    assert info.value.allowed == [1]
    assert info.value.request_id == 4
