"""The headless demo: start a sidecar, run a still and a short sequence through it, save PNGs.

Until the embedded micro models land (issue 8) the sidecar's only engine is the test
engine, so the pictures are test patterns; the path they travel (socket, job store,
worker process, events, atomic outputs) is the real one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genart_core.protocol import Client, ConnectionInfo, Event  # noqa: E402


def start_sidecar(state: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--state-dir", str(state), "--enable-test-engines"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if ConnectionInfo.read(state / "connection.json").pid == proc.pid:
                return proc
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the sidecar exited with code {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit("the sidecar did not start within 30 s")


def show(ev: Event) -> None:
    if ev.type == "progress":
        d = ev.data
        print(
            f"\r  frame {d['frame'] + 1}/{d['frames']}  step {d['step']}/{d['steps']}",
            end="",
            flush=True,
        )
    elif ev.type in ("result", "completed", "failed", "cancelled"):
        print(f"\r  {ev.type} {ev.data.get('frame', '')}".ljust(40), flush=True)


def save(client: Client, job: str, frame: int, path: Path) -> None:
    img = client.result(job, frame).attachments["image"]
    assert img.shape is not None
    h, w, _ = img.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombuffer("RGBA", (w, h), bytes(img.data), "raw", "RGBA", 0, 1).save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="genart-demo-") as tmp:
        proc = start_sidecar(Path(tmp))
        try:
            with Client.connect(Path(tmp) / "connection.json", client_name="genart-demo") as c:
                engines = [e["name"] for e in c.welcome["engines"]]
                print(f"sidecar pid {c.welcome['pid']} on {c.welcome['device']}, engines {engines}")
                print("still image:")
                job = c.submit(
                    "fake",
                    {"width": 256, "height": 256, "steps": 12, "step_seconds": 0.02, "seed": 3},
                )
                c.wait(job, show)
                save(c, job, 0, args.out / "still.png")
                print("sequence of 8 frames, streamed in frame by frame:")
                seq = c.submit(
                    "fake",
                    {"width": 160, "height": 90, "steps": 6, "step_seconds": 0.01},
                    sequence=True,
                    frames=8,
                )
                for i in range(8):
                    c.append(seq, i, params={"seed": 5})
                c.close_input(seq)
                c.wait(seq, show)
                for i in range(8):
                    save(c, seq, i, args.out / "sequence" / f"{i:04d}.png")
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"wrote {args.out / 'still.png'} and 8 frames under {args.out / 'sequence'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
