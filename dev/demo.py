"""The headless demo: a sidecar, Blender in the background and the genart add-on texturing
an animated scene and stylizing its animation; everything under out/demo/.

1. Uses the embedded micro model (genart_core/micro/weights/genart-micro-sd: a Stable
   Diffusion pipeline the project trained on procedural textures and Blender renders,
   64-128 px, no downloads, with its own depth ControlNet, which texture from camera and
   stylize use).
2. Starts a sidecar with no model configured: requests that name no model get the
   embedded one.
3. Runs the `bpy` wheel headless (dev/demo_blender.py) with the add-on zip installed into
   a throwaway Blender user under out/demo/: Spot and the Utah teapot on a ground plane,
   the camera orbiting them over 24 frames; Texture from camera on the
   two meshes (sd, depth-controlled), a Tileable texture on the ground (the procedural
   `texsynth` engine, which needs no model) and a 360° World (sd, panorama); a Cycles
   render of frame 1 (out/demo/scene.png); then Stylize animation over the 24 frames at
   256 px (sd img2img + depth, keyframed strength, a prompt schedule and a
   `prompt:` marker) into out/demo/genart/orbit/####.png, onto the Video Sequencer of
   out/demo/scene.blend and into out/demo/genart/orbit/orbit.mp4.
4. Stops the sidecar and prints what was written and the time per step.

`--quick` (what CI runs) does the same steps small, into out/demo-quick/: 6 frames at
128 px, a 160x90 Cycles picture with 4 samples, smaller textures, 4 steps.

Progress goes to stdout; any failure is one line `demo: error: ...` on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "dev"))

from genart_core.protocol import Client, ConnectionInfo  # noqa: E402

ASSETS = ROOT / "dev" / "assets"
BLENDER_SCRIPT = ROOT / "dev" / "demo_blender.py"
BLENDER_TIMEOUT = 900.0  # seconds for the whole Blender part
# Lines of Blender's output shown: the demo's, the operators' progress and their reports.
SHOWN = ("demo: ", "genart: ", "Info: ", "Warning: ")
T0 = time.monotonic()


class DemoError(Exception):
    """A failure the demo reports as one line."""


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f} s] {message}", flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def start_sidecar(state: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sidecar", "--state-dir", str(state)]
    cmd += ["--parent-pid", str(os.getpid())]  # gone with the demo, even after a kill -9
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if ConnectionInfo.read(state / "connection.json").pid == proc.pid:
                return proc
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise DemoError(f"the sidecar exited with code {proc.returncode} (see {rel(log)})")
        time.sleep(0.05)
    proc.terminate()
    raise DemoError(f"the sidecar did not start within 30 s (see {rel(log)})")


def blender_env(user: Path, connection: Path) -> dict[str, str]:
    """A throwaway Blender user: the developer's own Blender config stays untouched."""
    import build_addon

    shutil.rmtree(user, ignore_errors=True)
    env = build_addon.sandbox_env(user, user / "home", {"GENART_CONNECTION_FILE": str(connection)})
    env.pop("GENART_SIDECAR", None)
    return env


def lines_of(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield line.rstrip("\n")


@dataclass
class Settings:
    """What differs between the full demo and `--quick`."""

    out: Path
    frames: int = 24
    stylize_size: int = 256
    render: str = "640x360"
    samples: int = 16
    steps: int = 8
    texture_size: int = 512
    ground_size: int = 512
    world_size: int = 256
    name: str = "orbit"

    def blender_args(self) -> list[str]:
        return [
            "--frames", str(self.frames),
            "--stylize-size", str(self.stylize_size),
            "--render", self.render,
            "--samples", str(self.samples),
            "--steps", str(self.steps),
            "--texture-size", str(self.texture_size),
            "--ground-size", str(self.ground_size),
            "--world-size", str(self.world_size),
            "--name", self.name,
        ]  # fmt: skip


QUICK: dict[str, Any] = {  # the `--quick` form's Settings
    "frames": 6,
    "stylize_size": 128,
    "render": "160x90",
    "samples": 4,
    "steps": 4,
    "texture_size": 256,
    "ground_size": 256,
    "world_size": 128,
}


class Timings:
    """The time per step, printed as a table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    def add(self, label: str, seconds: float) -> None:
        self.rows.append((label, seconds))

    def step(self, label: str, t0: float) -> None:
        self.add(label, time.monotonic() - t0)


class StylizeClock:
    """Splits the stylize step by the operator's progress lines: rendering the frames'
    passes and sending them (until the job's first progress line), generating (until its
    last), then the strip and the MP4."""

    def __init__(self) -> None:
        self.start = self.sent = self.generated = 0.0

    def see(self, line: str) -> None:
        now = time.monotonic()
        if line.startswith("demo: stylize animation") and line.endswith("..."):
            self.start = now
        elif line.startswith("genart: stylize: ") and not line.startswith(
            "genart: stylize: rendered frame"
        ):
            self.sent = self.sent or now
            self.generated = now

    def rows(self, total: float) -> list[tuple[str, float]]:
        if not (self.start and self.sent):
            return []
        end = self.start + total
        return [
            ("  rendering the frames' passes (Cycles), sending them", self.sent - self.start),
            ("  stylizing them (sidecar), writing the frames", self.generated - self.sent),
            ("  the strip and the MP4", end - self.generated),
        ]


def run_blender(settings: Settings, zip_path: Path, connection: Path, timings: Timings) -> None:
    """dev/demo_blender.py in the bpy wheel; its `demo:` and `genart:` lines are shown,
    everything Blender prints goes to <out>/blender.log."""
    out = settings.out
    log_path = out / "blender.log"
    cmd = [
        sys.executable,
        str(BLENDER_SCRIPT),
        "--zip", str(zip_path),
        "--out", str(out),
        "--assets", str(ASSETS),
        *settings.blender_args(),
    ]  # fmt: skip
    env = blender_env(out / "blender-user", connection)
    error = ""
    ok = False
    clock = StylizeClock()
    # cwd outside the checkout's root: the repository is not put on sys.path by accident.
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            cmd,
            cwd=out,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
    ):
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(BLENDER_TIMEOUT, kill)
        timer.start()
        try:
            for line in lines_of(proc):
                log.write(line + "\n")
                clock.see(line)
                if line.startswith("demo: error: "):
                    error = line.removeprefix("demo: error: ")
                elif line.startswith("DEMO-TIME\t"):
                    _, seconds, label = line.split("\t", 2)
                    timings.add(label, float(seconds))
                    if label.startswith("stylize animation"):
                        timings.rows += clock.rows(float(seconds))
                elif line.startswith(SHOWN):
                    say("  " + line)
                elif line == "DEMO-BLENDER-OK":
                    ok = True
            code = proc.wait()
        finally:
            timer.cancel()
    if timed_out.is_set():
        raise DemoError(f"Blender took over {BLENDER_TIMEOUT:.0f} s (see {rel(log_path)})")
    if error:
        raise DemoError(f"{error} (Blender's output: {rel(log_path)})")
    if code != 0 or not ok:
        raise DemoError(f"Blender exited with code {code} (see {rel(log_path)})")


def check_outputs(settings: Settings) -> None:
    """The frames and the MP4 are there (the strip was checked in the saved .blend)."""
    folder = settings.out / "genart" / settings.name
    frames = sorted(folder.glob("[0-9][0-9][0-9][0-9].png"))
    if len(frames) != settings.frames:
        raise DemoError(f"{rel(folder)}: {len(frames)} frames, expected {settings.frames}")
    mp4 = folder / f"{settings.name}.mp4"
    if not mp4.is_file() or mp4.stat().st_size == 0:
        raise DemoError(f"no MP4 at {rel(mp4)}")


def clean(out: Path) -> None:
    """Removes the previous run's results."""
    for name in ("genart", "sequence", "state", "blender-user"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("scene.blend", "scene.blend1", "scene.png", "still.png", "blender.log"):
        (out / name).unlink(missing_ok=True)


def size_of(p: Path) -> str:
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
    n = sum(f.stat().st_size for f in files)
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def summary(settings: Settings, timings: Timings, total: float) -> None:
    out = settings.out
    seq = out / "genart" / settings.name
    frames = sorted(seq.glob("*.png"))
    generated = sorted(p for p in (out / "genart").glob("*") if p.is_file())
    w, h = Image.open(frames[0]).size if frames else (0, 0)
    rows = [
        (out / "scene.png", "the Cycles render of the textured scene (frame 1)"),
        (
            out / "scene.blend",
            f"the animated scene, the 'genart {settings.name}' strip on a Video Sequencer",
        ),
    ]
    rows += [
        (p, "generated (its recipe in the PNG)" if p.suffix == ".png" else "depth")
        for p in generated
    ]
    rows += [
        (seq, f"{len(frames)} stylized frames, {w}x{h}, ####.png (recipes in the PNGs)"),
        (seq / f"{settings.name}.mp4", "the stylized frames as an H.264 MP4"),
    ]
    print("\nwritten:")
    for path, what in rows:
        name = rel(path) + ("/" if path.is_dir() else "")
        print(f"  {name:44} {size_of(path):>8}  {what}")
    print(
        f"  logs: {rel(out / 'blender.log')}, {rel(out / 'sidecar.log')}, "
        f"{rel(out / 'state' / 'logs')}/"
    )
    print("\ntime per step:")
    for label, seconds in timings.rows:
        print(f"  {seconds:6.1f} s  {label}")
    print(f"  {total:6.1f} s  in all")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="the same steps, small (CI): into out/demo-quick/"
    )
    ap.add_argument("--out", type=Path, help="default out/demo/ (out/demo-quick/ with --quick)")
    args = ap.parse_args()
    default = ROOT / "out" / ("demo-quick" if args.quick else "demo")
    out: Path = (args.out or default).resolve()
    settings = Settings(out, **(QUICK if args.quick else {}))
    out.mkdir(parents=True, exist_ok=True)
    clean(out)
    print(
        "NOTE: the pictures come from genart's embedded micro model: a real Stable Diffusion\n"
        "pipeline, trained by the project on 2 CPU cores on procedural textures (bricks,\n"
        "tiles, planks, marble, stone, stripes, checker, dots, clouds in ten colours) and\n"
        "Blender renders. It follows colour and material words and depth, at 64-128 px;\n"
        "point the add-on at a real SD model for real pictures.",
        flush=True,
    )
    if args.quick:
        say(
            f"quick form: {settings.frames} frames at {settings.stylize_size} px, a "
            f"{settings.render} picture with {settings.samples} samples, into {rel(out)}/"
        )
    timings = Timings()
    import build_addon

    t0 = time.monotonic()
    zip_path = build_addon.build(out)
    say(f"add-on: built {rel(zip_path)}")
    timings.step("add-on zip", t0)
    state = out / "state"
    t0 = time.monotonic()
    proc = start_sidecar(state, out / "sidecar.log")
    connection = state / "connection.json"
    try:
        with Client.connect(connection, client_name="genart-demo") as c:
            engines = [e["name"] for e in c.welcome["engines"]]
            say(f"sidecar: pid {c.welcome['pid']}, device {c.welcome['device']}, engines {engines}")
            sd = next((e for e in c.welcome["engines"] if e["name"] == "sd"), {})
            default = sd.get("default_model")
            if not default:
                raise DemoError("the sidecar's sd engine has no embedded default model")
            say(f"model: embedded {default['name']} (sha256 {default['sha256'][:12]}...)")
        timings.step("sidecar start", t0)
        say(
            "Blender (bpy wheel, headless): the animated scene, three genart operators, a "
            f"Cycles render, Stylize animation ({settings.frames} frames)"
        )
        t0 = time.monotonic()
        run_blender(settings, zip_path, connection, timings)
        timings.step("Blender in all (the rows above and saving)", t0)
        check_outputs(settings)
    finally:
        stop(proc)
    say("done; the sidecar is stopped")
    summary(settings, timings, time.monotonic() - T0)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("demo: error: interrupted", file=sys.stderr)
    except Exception as exc:  # one line; GENART_DEBUG=1 shows the traceback
        if os.environ.get("GENART_DEBUG"):
            raise
        print(f"demo: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
