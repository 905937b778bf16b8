"""Binary framing of genart messages: a fixed header, a JSON envelope, raw attachments.

One frame on the wire is:

    header   20 bytes, big-endian: magic b"GART", major u8, minor u8, flags u16,
             json_len u32, payload_len u64
    json     json_len bytes of UTF-8 JSON (a JSON-RPC 2.0 object plus "attachments")
    payload  payload_len bytes: the bytes of every "array" and "blob" attachment, in the
             order the envelope lists them

Attachments never go through base64: a 2048² float image is sent as its own bytes. Every
length is capped before anything is allocated, and a stream whose first bytes are not the
magic (an HTTP request, a stray client) is refused at once. Stdlib only: the Blender add-on
carries this file.
"""

from __future__ import annotations

import json
import math
import mmap
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import (
    BadFrame,
    ConnectionLost,
    FrameTooLarge,
    GenartError,
    InvalidRequest,
    ParseError,
    SidecarUnresponsive,
    VersionMismatch,
)

MAGIC = b"GART"
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0
HEADER = struct.Struct("!4sBBHIQ")
HEADER_SIZE = HEADER.size  # 20

MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024 * 1024
MAX_ATTACHMENTS = 256

# Little-endian always; names as numpy spells them, so `np.dtype(name)` reads them.
DTYPES: dict[str, int] = {
    "uint8": 1,
    "uint16": 2,
    "int32": 4,
    "float16": 2,
    "float32": 4,
}
ATTACHMENT_KINDS = ("array", "blob", "path")
COLOR_SPACES = ("srgb", "linear", "non_color")


@dataclass(frozen=True)
class Attachment:
    """One binary part of a message: an array, an encoded file's bytes, or a shared path.

    `data` is any object with the buffer protocol (bytes, bytearray, memoryview, a
    C-contiguous numpy array); it is sent as it is, without a copy.
    """

    name: str
    kind: str
    data: Any = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    color_space: str | None = None
    encoding: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def array(
        cls, name: str, data: Any, dtype: str, shape: Iterable[int], color_space: str = "linear"
    ) -> Attachment:
        att = cls(name, "array", data, dtype, tuple(int(s) for s in shape), color_space)
        att.validate()
        return att

    @classmethod
    def blob(cls, name: str, data: Any, encoding: str) -> Attachment:
        att = cls(name, "blob", data, encoding=encoding)
        att.validate()
        return att

    @classmethod
    def file_path(cls, name: str, path: str, encoding: str) -> Attachment:
        att = cls(name, "path", None, encoding=encoding, path=str(path))
        att.validate()
        return att

    @property
    def nbytes(self) -> int:
        if self.kind == "path":
            return 0
        return _as_bytes_view(self.data).nbytes

    def view(self) -> memoryview:
        """The attachment's bytes as a flat byte memoryview (no copy)."""
        return _as_bytes_view(self.data)

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 128:
            raise BadFrame(
                "attachment name must be a non-empty string of at most 128 chars",
                field="attachments.name",
            )
        if self.kind not in ATTACHMENT_KINDS:
            raise BadFrame(
                f"unknown attachment kind {self.kind!r}",
                field="attachments.kind",
                allowed=list(ATTACHMENT_KINDS),
            )
        if self.kind == "array":
            if self.dtype not in DTYPES:
                raise BadFrame(
                    f"unsupported dtype {self.dtype!r}",
                    field="attachments.dtype",
                    allowed=list(DTYPES),
                )
            if not self.shape or any((not isinstance(s, int)) or s < 0 for s in self.shape):
                raise BadFrame(f"bad shape {self.shape!r}", field="attachments.shape")
            if self.color_space not in COLOR_SPACES:
                raise BadFrame(
                    f"unknown colour space {self.color_space!r}",
                    field="attachments.color_space",
                    allowed=list(COLOR_SPACES),
                )
            if self.data is not None:
                expected = math.prod(self.shape) * DTYPES[self.dtype]
                if self.nbytes != expected:
                    raise BadFrame(
                        f"array {self.name!r} has {self.nbytes} bytes, shape {list(self.shape)} "
                        f"of {self.dtype} needs {expected}",
                        field="attachments.shape",
                    )
        elif not self.encoding or not isinstance(self.encoding, str):
            raise BadFrame(
                f"{self.kind} attachment {self.name!r} needs an encoding",
                field="attachments.encoding",
            )
        if self.kind == "path" and not self.path:
            raise BadFrame(f"path attachment {self.name!r} needs a path", field="attachments.path")

    def meta(self) -> dict[str, Any]:
        """The attachment's description as it appears in the JSON envelope."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "array":
            out.update(dtype=self.dtype, shape=list(self.shape or ()), color_space=self.color_space)
        else:
            out["encoding"] = self.encoding
        if self.kind == "path":
            out["path"] = self.path
        else:
            out["nbytes"] = self.nbytes
        out.update(self.extra)
        return out

    @classmethod
    def from_meta(cls, meta: Any, data: Any = None) -> Attachment:
        if not isinstance(meta, dict):
            raise BadFrame("each attachment must be a JSON object", field="attachments")
        known = {"name", "kind", "dtype", "shape", "color_space", "encoding", "path", "nbytes"}
        shape = meta.get("shape")
        att = cls(
            name=meta.get("name"),  # type: ignore[arg-type]
            kind=meta.get("kind"),  # type: ignore[arg-type]
            data=data,
            dtype=meta.get("dtype"),
            shape=tuple(shape) if isinstance(shape, list) else None,
            color_space=meta.get("color_space"),
            encoding=meta.get("encoding"),
            path=meta.get("path"),
            extra={k: v for k, v in meta.items() if k not in known},
        )
        att.validate()
        return att


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
LARGE_ATTACHMENT = 1 << 20


def allocate(nbytes: int) -> Any:
    """A fresh writable buffer for a received attachment.

    Large ones are anonymous memory maps pre-faulted in one call (MAP_POPULATE, Linux):
    faulting a fresh bytearray in page by page costs about as much as the socket copy.
    """
    if nbytes >= LARGE_ATTACHMENT and _MAP_POPULATE:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_POPULATE
        return mmap.mmap(-1, nbytes, flags=flags)
    return bytearray(nbytes)


class BufferPool:
    """Reuses large receive buffers once nothing outside the pool refers to them.

    A sequence sends frame after frame of one size; allocating and faulting in a new
    64 MiB buffer for each costs as much as moving the bytes. A pooled buffer is handed
    out again only when its reference count shows that no attachment, memoryview or numpy
    array still uses it (CPython), so reuse can never overwrite data someone holds.
    Idle buffers are dropped after `max_idle` seconds.
    """

    def __init__(
        self, max_buffers: int = 4, max_bytes: int = 512 << 20, max_idle: float = 60.0
    ) -> None:
        self.max_buffers = max_buffers
        self.max_bytes = max_bytes
        self.max_idle = max_idle
        self._bufs: list[list[Any]] = []  # [buffer, last handed out (monotonic)]

    def get(self, nbytes: int) -> Any:
        if nbytes < LARGE_ATTACHMENT:
            return bytearray(nbytes)
        now = time.monotonic()
        self._bufs = [
            e for e in self._bufs if now - e[1] < self.max_idle or sys.getrefcount(e[0]) > 2
        ]
        for entry in self._bufs:
            # References: the entry list, the getrefcount argument. Nobody else.
            if len(entry[0]) == nbytes and sys.getrefcount(entry[0]) == 2:
                entry[1] = now
                return entry[0]
        buf = allocate(nbytes)
        pooled = sum(len(e[0]) for e in self._bufs)
        if len(self._bufs) < self.max_buffers and pooled + nbytes <= self.max_bytes:
            self._bufs.append([buf, now])
        return buf


def _as_bytes_view(data: Any) -> memoryview:
    view = memoryview(data)
    if not view.contiguous:
        raise BadFrame("attachment data must be contiguous in memory", field="attachments.data")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


@dataclass
class Message:
    """A decoded frame: the JSON envelope and its attachments, in order."""

    envelope: dict[str, Any]
    attachments: list[Attachment] = field(default_factory=list)

    def attachment(self, name: str) -> Attachment | None:
        for att in self.attachments:
            if att.name == name:
                return att
        return None


@dataclass(frozen=True)
class Limits:
    max_json: int = MAX_JSON_BYTES
    max_payload: int = MAX_PAYLOAD_BYTES
    max_attachments: int = MAX_ATTACHMENTS


def encode_parts(envelope: dict[str, Any], attachments: Iterable[Attachment] = ()) -> list[Any]:
    """The frame as a list of buffers to write in order (header, JSON, each attachment)."""
    atts = list(attachments)
    if len(atts) > MAX_ATTACHMENTS:
        raise FrameTooLarge(
            f"{len(atts)} attachments, at most {MAX_ATTACHMENTS}", field="attachments"
        )
    env = dict(envelope)
    if atts:
        env["attachments"] = [a.meta() for a in atts]
    body = json.dumps(env, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(body) > MAX_JSON_BYTES:
        raise FrameTooLarge(f"JSON envelope of {len(body)} bytes, at most {MAX_JSON_BYTES}")
    views = [a.view() for a in atts if a.kind != "path"]
    payload_len = sum(v.nbytes for v in views)
    if payload_len > MAX_PAYLOAD_BYTES:
        raise FrameTooLarge(f"payload of {payload_len} bytes, at most {MAX_PAYLOAD_BYTES}")
    header = HEADER.pack(MAGIC, PROTOCOL_MAJOR, PROTOCOL_MINOR, 0, len(body), payload_len)
    return [header, body, *views]


class FrameStream:
    """Reads and writes frames on a socket or a pair of binary files (a pipe).

    Reading fills preallocated buffers with `recv_into`/`readinto`, so a large
    attachment is copied once, from the kernel into its final bytearray.
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        rfile: IO[bytes] | None = None,
        wfile: IO[bytes] | None = None,
        limits: Limits = Limits(),
        stall_timeout: float = 30.0,
    ) -> None:
        self.sock = sock
        self.stall_timeout = stall_timeout
        self.pool = BufferPool()
        self.rfile = rfile
        self.wfile = wfile
        self.limits = limits
        self.bytes_received = 0

    # -- reading ---------------------------------------------------------------------
    def _read_into(self, view: memoryview, *, at_boundary: bool = False) -> None:
        pos = 0
        total = view.nbytes
        stalled_since: float | None = None
        while pos < total:
            if self.sock is not None:
                try:
                    n = self.sock.recv_into(view[pos:], min(total - pos, 1 << 22))
                except TimeoutError:
                    # Quiet before a frame starts is the caller's business (it may ping);
                    # quiet in the middle of a frame is waited out up to stall_timeout.
                    if at_boundary and pos == 0:
                        raise
                    now = time.monotonic()
                    stalled_since = stalled_since or now
                    if now - stalled_since >= self.stall_timeout:
                        raise SidecarUnresponsive(
                            f"the peer stopped sending in the middle of a frame "
                            f"({pos} of {total} bytes)"
                        ) from None
                    continue
                stalled_since = None
            else:
                assert self.rfile is not None
                # typeshed's IO[bytes] (what Popen's pipes are typed as) lacks readinto; the
                # real objects are buffered readers, which have it.
                n = self.rfile.readinto(view[pos:])  # type: ignore[attr-defined]
            if not n:
                if at_boundary and pos == 0:
                    raise ConnectionLost("connection closed")
                raise BadFrame(f"truncated frame: got {pos} of {total} bytes")
            pos += n
            self.bytes_received += n

    def read_header(self) -> tuple[int, int, int]:
        """Reads and checks a header; returns (major, json_len, payload_len)."""
        head = bytearray(HEADER_SIZE)
        view = memoryview(head)
        self._read_into(view[:4], at_boundary=True)
        if bytes(head[:4]) != MAGIC:
            raise BadFrame(
                "not a genart frame (bad magic)", details={"first_bytes": repr(bytes(head[:4]))}
            )
        self._read_into(view[4:])
        _, major, _minor, _flags, json_len, payload_len = HEADER.unpack(head)
        if json_len > self.limits.max_json:
            raise FrameTooLarge(
                f"JSON envelope of {json_len} bytes, at most {self.limits.max_json}",
                field="json_len",
            )
        if payload_len > self.limits.max_payload:
            raise FrameTooLarge(
                f"payload of {payload_len} bytes, at most {self.limits.max_payload}",
                field="payload_len",
            )
        return major, json_len, payload_len

    def read_message(self) -> Message:
        """Reads one whole frame. Raises ConnectionLost at a clean end of stream."""
        major, json_len, payload_len = self.read_header()
        body = bytearray(json_len)
        self._read_into(memoryview(body))
        # The payload must be consumed even when the JSON is bad, to stay in sync.
        try:
            envelope = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._skip(payload_len)
            raise ParseError(
                f"invalid JSON envelope: {exc.msg if hasattr(exc, 'msg') else exc}"
            ) from None
        if not isinstance(envelope, dict):
            self._skip(payload_len)
            raise InvalidRequest("the envelope must be a JSON object")
        try:
            if major != PROTOCOL_MAJOR:
                raise VersionMismatch(
                    f"frame is protocol version {major}, this side speaks {PROTOCOL_MAJOR}",
                    field="version",
                    allowed=[PROTOCOL_MAJOR],
                )
            metas = envelope.pop("attachments", None) or []
            if not isinstance(metas, list) or len(metas) > self.limits.max_attachments:
                raise BadFrame(
                    f"attachments must be a list of at most {self.limits.max_attachments}",
                    field="attachments",
                )
            sized = [m for m in metas if not isinstance(m, dict) or m.get("kind") != "path"]
            # Unchecked JSON values until the test below (which sums them only when all are ints).
            sizes: list[Any] = [m.get("nbytes") if isinstance(m, dict) else None for m in sized]
            if any(not isinstance(s, int) or s < 0 for s in sizes) or sum(sizes) != payload_len:
                raise BadFrame(
                    f"attachment sizes {sizes} do not add up to the payload length {payload_len}",
                    field="attachments.nbytes",
                )
        except GenartError as exc:
            self._skip(payload_len)
            exc.request_id = envelope.get("id")
            raise
        attachments: list[Attachment] = []
        errors: list[BadFrame] = []
        for meta in metas:
            data = None
            if meta.get("kind") != "path":
                data = self.pool.get(meta["nbytes"])
                self._read_into(memoryview(data))
            try:
                attachments.append(Attachment.from_meta(meta, data))
            except BadFrame as exc:
                errors.append(exc)
        if errors:
            errors[0].request_id = envelope.get("id")
            raise errors[0]
        return Message(envelope, attachments)

    def _skip(self, n: int) -> None:
        chunk = bytearray(min(n, 1 << 20) or 1)
        view = memoryview(chunk)
        while n > 0:
            k = min(n, len(chunk))
            self._read_into(view[:k])
            n -= k

    # -- writing ---------------------------------------------------------------------
    def write_message(
        self, envelope: dict[str, Any], attachments: Iterable[Attachment] = ()
    ) -> None:
        parts = encode_parts(envelope, attachments)
        if self.sock is not None:
            # One small send for header + JSON, then each attachment straight from its buffer.
            self.sock.sendall(parts[0] + parts[1])
            for part in parts[2:]:
                self.sock.sendall(part)
        else:
            assert self.wfile is not None
            for part in parts:
                self.wfile.write(part)
            self.wfile.flush()
