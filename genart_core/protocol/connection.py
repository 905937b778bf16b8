"""Where a sidecar listens and how to reach it: addresses, state dirs, connection files.

A running sidecar writes a connection file (mode 0600) holding its transport, address,
token, pid and protocol version. Clients read it to connect; nothing secret ever goes on a
command line. Unix domain sockets where the platform has them, loopback TCP elsewhere.
Stdlib only.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .atomicio import atomic_write
from .errors import InvalidParams
from .framing import PROTOCOL_MAJOR, PROTOCOL_MINOR

CONNECTION_FILE_NAME = "connection.json"
HAS_UNIX_SOCKETS = hasattr(socket, "AF_UNIX")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def default_state_dir() -> Path:
    """The per-user state dir on local disk (GENART_STATE_DIR wins)."""
    env = os.environ.get("GENART_STATE_DIR")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state")
    return base / "genart"


@dataclass(frozen=True)
class Address:
    """A sidecar's address: a Unix socket path, or a TCP host and port."""

    transport: str  # "unix" | "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        """`unix:/path`, a plain path, or `host:port` / `tcp:host:port`."""
        if text.startswith("unix:"):
            return cls("unix", path=text[5:])
        if text.startswith("tcp:"):
            text = text[4:]
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit():
            return cls("tcp", host=host.strip("[]") or "127.0.0.1", port=int(port))
        return cls("unix", path=text)

    def is_loopback(self) -> bool:
        return self.transport == "unix" or (self.host in LOOPBACK_HOSTS)

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        if self.transport == "unix":
            if not HAS_UNIX_SOCKETS:
                raise InvalidParams(
                    "Unix sockets are not available on this system; use TCP",
                    field="transport",
                    allowed=["tcp"],
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return sock


@dataclass(frozen=True)
class ConnectionInfo:
    """The content of a connection file."""

    transport: str
    token: str
    pid: int
    protocol_version: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    state_dir: str | None = None

    @property
    def address(self) -> Address:
        return Address(self.transport, path=self.path, host=self.host, port=self.port)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ConnectionInfo:
        data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        fields: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        missing = [k for k in ("transport", "token", "pid", "protocol_version") if not fields[k]]
        if missing:
            raise InvalidParams(f"connection file {path} lacks {missing}", field=missing[0])
        return cls(**fields)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Writes the file atomically with mode 0600 (it holds the token)."""
        path = Path(path)
        data = {k: v for k, v in asdict(self).items() if v is not None}
        write_private_file(path, json.dumps(data, indent=2).encode())


def protocol_version_string() -> str:
    return f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"


def write_private_file(path: Path, data: bytes) -> None:
    """Atomic write of a file only its owner can read (mode 0600)."""
    atomic_write(path, data, mode=0o600)
