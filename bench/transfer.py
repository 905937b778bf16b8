"""Transfer benchmark: a 2048² RGBA float32 image + float32 depth through the sidecar.

Compares, in one run on one machine:
  raw      the same bytes sent to an echo process over the same kind of socket and back
           (recv_into a preallocated buffer, sendall back): the floor;
  sidecar  the same frame as two array attachments to a real sidecar's `echo` method and
           back, through the protocol client (framing, JSON, handshake'd connection);
  submit   (information) a durable submit of the frame as a job's inputs: written and
           fsynced on the sidecar before the job id comes back.
Prints medians and the ratio sidecar/raw (target: <= 2.0). Usage:

    python bench/transfer.py [--transport unix|tcp] [--rounds 30] [--size 2048] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genart_core.protocol import Attachment, Client, ConnectionInfo  # noqa: E402

ECHO_SERVER = r"""
import socket, struct, sys
family, where = sys.argv[1], sys.argv[2]
if family == "unix":
    srv = socket.socket(socket.AF_UNIX); srv.bind(where)
else:
    srv = socket.socket(); srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(where if family == "unix" else srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = None
while True:
    head = conn.recv(8, socket.MSG_WAITALL)
    if len(head) < 8:
        break
    (n,) = struct.unpack("!Q", head)
    if buf is None or len(buf) < n:
        buf = bytearray(n)
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        got += conn.recv_into(view[got:], n - got)
    conn.sendall(head)
    conn.sendall(view)
"""


class RawEcho:
    """The floor: an echo process on the same kind of socket, buffers reused."""

    def __init__(self, transport: str, total: int) -> None:
        self.tmp = tempfile.mkdtemp(prefix="genart-bench-")
        where = os.path.join(self.tmp, "echo.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, transport, where], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        addr = self.proc.stdout.readline().strip()
        if transport == "unix":
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(addr)
        else:
            self.sock = socket.create_connection(("127.0.0.1", int(addr)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.total = total
        self.out = bytearray(total)

    def round_trip(self, parts: list[memoryview]) -> float:
        t0 = time.perf_counter()
        self.sock.sendall(self.total.to_bytes(8, "big"))
        for p in parts:
            self.sock.sendall(p)
        self.sock.recv(8, socket.MSG_WAITALL)
        view, got = memoryview(self.out), 0
        while got < self.total:
            got += self.sock.recv_into(view[got:], self.total - got)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


def start_sidecar(transport: str, state: Path) -> tuple[subprocess.Popen[bytes], Path]:
    conn_file = state / "connection.json"
    args = [sys.executable, "-m", "sidecar", "--state-dir", str(state), "--enable-test-engines"]
    if transport == "tcp":
        args += ["--tcp", "127.0.0.1:0"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if ConnectionInfo.read(conn_file).pid == proc.pid:
                return proc, conn_file
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError("sidecar did not start")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", choices=["unix", "tcp"], default="unix")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    n = args.size
    color = bytearray(os.urandom(1024)) * (n * n * 16 // 1024)  # (n, n, 4) float32
    depth = bytearray(os.urandom(1024)) * (n * n * 4 // 1024)  # (n, n) float32
    atts = [
        Attachment.array("color", color, "float32", (n, n, 4), "linear"),
        Attachment.array("depth", depth, "float32", (n, n), "linear"),
    ]
    mib = (len(color) + len(depth)) / 2**20

    raw_echo = RawEcho(args.transport, len(color) + len(depth))
    raw: list[float] = []
    via: list[float] = []
    submit: list[float] = []
    with tempfile.TemporaryDirectory(prefix="genart-bench-state-") as state:
        proc, conn_file = start_sidecar(args.transport, Path(state))
        try:
            client = Client.connect(conn_file)
            # Interleaved, so both paths see the same machine noise.
            for _ in range(args.rounds):
                raw.append(raw_echo.round_trip([memoryview(color), memoryview(depth)]))
                t0 = time.perf_counter()
                reply = client.call("echo", {}, atts)
                via.append(time.perf_counter() - t0)
                assert reply.attachments["color"].data == color
                del reply
            for _ in range(max(args.rounds // 4, 3)):
                t0 = time.perf_counter()
                client.call(
                    "submit", {"engine": "fake", "task": "img2img", "params": {"steps": 1}}, atts
                )
                submit.append(time.perf_counter() - t0)
            client.close()
        finally:
            proc.terminate()
            proc.wait(30)
            raw_echo.close()

    res = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "transport": args.transport,
        "frame_mib": round(mib, 1),
        "rounds": args.rounds,
        "raw_ms": round(statistics.median(raw) * 1000, 1),
        "sidecar_ms": round(statistics.median(via) * 1000, 1),
        "ratio": round(statistics.median(via) / statistics.median(raw), 2),
        "raw_min_ms": round(min(raw) * 1000, 1),
        "sidecar_min_ms": round(min(via) * 1000, 1),
        "durable_submit_ms": round(statistics.median(submit) * 1000, 1),
    }
    print(
        f"frame {res['frame_mib']} MiB ({n}x{n} RGBA float32 + depth float32), "
        f"{args.transport} socket, median of {args.rounds}"
    )
    print(f"  raw echo round trip      {res['raw_ms']:8.1f} ms")
    print(
        f"  sidecar echo round trip  {res['sidecar_ms']:8.1f} ms   ratio {res['ratio']:.2f}"
        " (target <= 2.0)"
    )
    print(f"  minimum: raw {res['raw_min_ms']:.1f} ms, sidecar {res['sidecar_min_ms']:.1f} ms")
    print(f"  durable submit (one way) {res['durable_submit_ms']:8.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
