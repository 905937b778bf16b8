"""The sidecar server: listens on a local socket, moves frames, owns the process's lifetime.

Each connection gets a reader thread (decodes frames, asks the endpoint, answers) and a
writer thread (sends responses and pushed events in order, so a slow client never stalls
the job runner). Bytes that are not a genart frame close the connection at once. The
`Sidecar` class ties the parts together: state-dir lock, store, runner, listener,
connection file, parent watchdog, and an orderly stop.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genart_core.protocol import messages as m
from genart_core.protocol.connection import (
    HAS_UNIX_SOCKETS,
    Address,
    ConnectionInfo,
    protocol_version_string,
)
from genart_core.protocol.errors import (
    BadFrame,
    ConnectionLost,
    FrameTooLarge,
    GenartError,
    SidecarUnresponsive,
    VersionMismatch,
)
from genart_core.protocol.framing import Attachment, FrameStream, Limits

from .endpoint import Endpoint, Response, Session
from .events import EventHub
from .jobs import JobRunner
from .procutil import pid_alive
from .statedir import StateDirLock
from .store import Store

log = logging.getLogger("genart.sidecar")

MAX_CONNECTIONS = 64
# Closes the connection: the stream can no longer be trusted to be in step.
_FATAL_READ_ERRORS = (BadFrame, FrameTooLarge, VersionMismatch, SidecarUnresponsive)


class ClientConnection:
    def __init__(self, sock: socket.socket, server: Sidecar, peer: str) -> None:
        self.sock = sock
        self.server = server
        self.peer = peer
        self.stream = FrameStream(sock, limits=server.limits)
        self.session = Session(sub=self)
        self.outbox: queue.Queue[tuple[dict[str, Any], list[Attachment]] | None] = queue.Queue()
        self.closed = threading.Event()

    def start(self) -> None:
        timer = threading.Timer(self.server.config.hello_timeout, self._hello_deadline)
        timer.daemon = True
        timer.start()
        threading.Thread(target=self._read_loop, name=f"conn-read-{self.peer}", daemon=True).start()
        threading.Thread(
            target=self._write_loop, name=f"conn-write-{self.peer}", daemon=True
        ).start()

    def send_event(self, params: dict[str, Any], attachments: list[Attachment]) -> None:
        if not self.closed.is_set():
            self.outbox.put((m.notification(m.EVENT_NOTIFICATION, params), attachments))

    def _hello_deadline(self) -> None:
        """Frees the slot of a peer that connected but never authenticated."""
        if not self.session.authenticated and not self.closed.is_set():
            log.info("closing %s: no hello in time", self.peer)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _reply(self, resp: Response) -> None:
        self.outbox.put((resp.envelope, resp.attachments))

    def _read_loop(self) -> None:
        try:
            while not self.closed.is_set():
                try:
                    msg = self.stream.read_message()
                except ConnectionLost:
                    return
                except _FATAL_READ_ERRORS as exc:
                    log.info("closing %s: %s", self.peer, exc)
                    if not (isinstance(exc, BadFrame) and "bad magic" in exc.message):
                        self._reply(Response(m.error_response(exc.request_id, exc)))
                    return
                except GenartError as exc:  # bad JSON, bad envelope: the stream is in step
                    self._reply(Response(m.error_response(exc.request_id, exc)))
                    if not self.session.authenticated:
                        return  # a peer that has not said hello gets one answer, no more
                    continue
                if (
                    self.session.authenticated
                    and msg.envelope.get("method") in self.server.endpoint.slow_methods
                ):
                    # Slow work (hashing models, waiting for the worker) runs aside, so
                    # this connection's pings and cancels are still answered meanwhile.
                    self.server.pool.submit(self._handle_aside, msg)
                    continue
                resp = self.server.endpoint.handle(self.session, msg)
                if resp is not None:
                    self._reply(resp)
                    if resp.close:
                        return
        except OSError as exc:
            log.info("connection %s failed: %s", self.peer, exc)
        finally:
            self.close()

    def _handle_aside(self, msg: Any) -> None:
        resp = self.server.endpoint.handle(self.session, msg)
        if resp is not None and not self.closed.is_set():
            self._reply(resp)

    def _write_loop(self) -> None:
        while True:
            item = self.outbox.get()
            if item is None:
                break
            try:
                self.stream.write_message(*item)
            except (OSError, GenartError) as exc:
                log.info("cannot write to %s: %s", self.peer, exc)
                break
        self.closed.set()
        self.server.hub.drop(self)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.server.forget(self)

    def close(self) -> None:
        """Stops reading; pending replies are flushed, then the socket closes."""
        if not self.closed.is_set():
            self.closed.set()
            self.outbox.put(None)


@dataclass
class SidecarConfig:
    state_dir: Path
    address: Address | None = None  # None: a Unix socket in the state dir (TCP on Windows)
    connection_file: Path | None = None
    parent_pid: int | None = None
    allow_remote: bool = False
    test_engines: bool = False
    max_store_bytes: int = 10 * 2**30
    cancel_grace: float = 3.0
    token: str | None = None
    limits: Limits = Limits()
    device: str = "auto"  # auto | cuda | mps | cpu
    memory: tuple[str, ...] = ()  # attention_slicing, vae_tiling, cpu_offload
    allow_pickle: bool = False  # load pickle checkpoints (.ckpt/.pt/.bin): runs their code
    model_roots: tuple[Path, ...] = ()  # folders scanned by `models` (plus GENART_MODELS)
    hello_timeout: float = 10.0  # seconds a new connection has to authenticate


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.limits = config.limits
        self.connection_file = config.connection_file or self.state_dir / "connection.json"
        self.token = config.token or secrets.token_hex(32)
        self.log_path = self.state_dir / "logs" / "sidecar.log"
        self._stopped = threading.Event()
        self._stopping = threading.Event()
        self._conns: set[ClientConnection] = set()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="slow-request")
        self._conns_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._socket_dir: Path | None = None
        self.address: Address | None = None

    # -- start -----------------------------------------------------------------------
    def start(self) -> None:
        address = self.config.address or self._default_address()
        if not address.is_loopback() and not self.config.allow_remote:
            raise BadFrame(
                f"refusing to listen on {address}: not a loopback address; "
                "pass --allow-remote to serve other machines",
                field="tcp",
            )
        self.lock = StateDirLock(self.state_dir)
        self.lock.acquire(self.connection_file)
        self.store = Store(self.state_dir)
        self.hub = EventHub(self.store)
        for job in self.store.recover():
            self.hub.emit(job, "queued", {"recovered": True})
        worker_args = ["--device", self.config.device, "--memory", ",".join(self.config.memory)]
        if self.config.test_engines:
            worker_args.append("--test-engines")
        if self.config.allow_pickle:
            worker_args.append("--allow-pickle")
        self.runner = JobRunner(
            self.store,
            self.hub,
            worker_args=worker_args,
            log_dir=self.state_dir / "logs",
            cancel_grace=self.config.cancel_grace,
            max_store_bytes=self.config.max_store_bytes,
        )
        self.endpoint = Endpoint(
            self.store,
            self.hub,
            self.runner,
            token=self.token,
            state_dir=self.state_dir,
            log_path=self.log_path,
            limits=self.limits,
            test_methods=self.config.test_engines,
            on_shutdown=self.request_stop,
            memory_options=self.config.memory,
            model_roots=self.config.model_roots,
        )
        self.runner.start()
        self._listener, self.address = self._listen(address)
        info = ConnectionInfo(
            transport=self.address.transport,
            token=self.token,
            pid=os.getpid(),
            protocol_version=protocol_version_string(),
            path=self.address.path,
            host=self.address.host,
            port=self.address.port,
            state_dir=str(self.state_dir),
        )
        info.write(self.connection_file)
        threading.Thread(target=self._accept_loop, name="accept", daemon=True).start()
        if self.config.parent_pid:
            threading.Thread(
                target=self._watch_parent,
                args=(self.config.parent_pid,),
                name="parent-watchdog",
                daemon=True,
            ).start()
        log.info("serving on %s (state dir %s, pid %d)", self.address, self.state_dir, os.getpid())

    def _default_address(self) -> Address:
        if not HAS_UNIX_SOCKETS:
            return Address("tcp", host="127.0.0.1", port=0)
        folder = self.state_dir / "run"
        if len(str(folder / "sidecar.sock")) > 100:  # sun_path is ~104-108 bytes
            folder = Path(tempfile.mkdtemp(prefix="genart-"))
            self._socket_dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        return Address("unix", path=str(folder / "sidecar.sock"))

    def _listen(self, address: Address) -> tuple[socket.socket, Address]:
        if address.transport == "unix":
            path = Path(address.path or "")
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                path.unlink()  # we hold the state-dir lock: a socket left here is stale
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o077)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            sock.listen(MAX_CONNECTIONS)
            return sock, address
        family = socket.AF_INET6 if ":" in (address.host or "") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host or "127.0.0.1", address.port or 0))
        sock.listen(MAX_CONNECTIONS)
        port = sock.getsockname()[1]
        return sock, Address("tcp", host=address.host or "127.0.0.1", port=port)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        self._listener.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.1)
                continue
            sock.settimeout(None)
            if sock.family != getattr(socket, "AF_UNIX", None):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._conns_lock:
                if len(self._conns) >= MAX_CONNECTIONS:
                    sock.close()
                    continue
                conn = ClientConnection(sock, self, str(addr) or "unix")
                self._conns.add(conn)
            conn.start()

    def forget(self, conn: ClientConnection) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def _watch_parent(self, pid: int) -> None:
        while not self._stopping.wait(1.0):
            if not pid_alive(pid):
                log.info("parent process %d is gone: stopping", pid)
                self.request_stop()
                return

    # -- stop ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stops soon, from any thread (after the current reply is sent)."""
        threading.Thread(target=self.stop, name="stop", daemon=True).start()

    def stop(self) -> None:
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        time.sleep(0.05)  # let a shutdown reply leave
        log.info("stopping")
        if self._listener is not None:
            self._listener.close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()
        self.runner.stop()
        for path in (
            self.connection_file,
            Path(self.address.path) if self.address and self.address.path else None,
        ):
            if path is not None:
                try:
                    path.unlink()
                except OSError:
                    pass
        if self._socket_dir is not None:
            try:
                self._socket_dir.rmdir()
            except OSError:
                pass
        self.store.close()
        self.lock.release()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
