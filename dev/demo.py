"""The headless demo: a sidecar, Blender in the background and the genart add-on texturing a
scene, then a short sequence streamed through the sidecar; everything under out/demo/.

1. Builds tiny Stable Diffusion stand-ins once under out/demo/models/ (dev/tiny_models.py:
   the real SD 1.5 architecture and a depth ControlNet, untrained random weights, no
   downloads) until the embedded micro models land (issue 8): the pipeline is the real
   one, but they paint coloured noise, not pictures.
2. Starts a sidecar (`--models out/demo/models`, the test engines enabled for step 4).
3. Runs the `bpy` wheel headless (dev/demo_blender.py) with the add-on zip installed into
   a throwaway Blender user under out/demo/: Spot and the Utah teapot on a ground plane get
   Texture from camera (sd + depth ControlNet), the ground a Tileable texture (the
   procedural `texsynth` engine, which needs no model) and the scene a 360° World (sd,
   panorama); it saves out/demo/scene.blend (images in out/demo/genart/) and renders
   out/demo/scene.png with Cycles.
4. Streams an 8-frame sequence through the test engine (test patterns) into
   out/demo/sequence/, until the sequence operators land.

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
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "dev"))

from genart_core.protocol import Client, ConnectionInfo, Event  # noqa: E402

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


def build_models(folder: Path) -> tuple[Path, Path]:
    """The tiny SD model and depth ControlNet under `folder`, built once (a few seconds)."""
    sd, cn = folder / "sd-tiny", folder / "sd-tiny-depth-controlnet"
    if (folder / "README.txt").is_file() and sd.is_dir() and cn.is_dir():
        say(f"models: reusing the tiny stand-ins in {rel(folder)}")
        return sd, cn
    say(f"models: building tiny SD + depth ControlNet stand-ins in {rel(folder)} (once)")
    for quiet in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(quiet, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from tiny_models import build_tiny_controlnet, build_tiny_sd

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    built = build_tiny_sd(tmp / "_build")
    built.rename(tmp / sd.name)
    shutil.rmtree(tmp / "_build")
    build_tiny_controlnet(tmp / sd.name, tmp / cn.name)
    (tmp / "README.txt").write_text(
        "Untrained stand-ins built by dev/demo.py (dev/tiny_models.py): the SD 1.5\n"
        "architecture, tiny, with random weights, and a depth ControlNet for it. They run\n"
        "the real pipelines but paint coloured noise. Replaced by the embedded micro\n"
        "models (issue 8). Delete this folder to rebuild it.\n"
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return sd, cn


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def start_sidecar(state: Path, models: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sidecar", "--state-dir", str(state), "--models", str(models)]
    cmd.append("--enable-test-engines")  # the `fake` engine for the sequence part
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
    shutil.rmtree(user, ignore_errors=True)
    (user / "home").mkdir(parents=True)
    env = {
        **os.environ,
        "BLENDER_USER_RESOURCES": str(user),
        "BLENDER_USER_CONFIG": str(user / "config"),
        "BLENDER_USER_SCRIPTS": str(user / "scripts"),
        "BLENDER_USER_EXTENSIONS": str(user / "extensions"),
        "BLENDER_USER_DATAFILES": str(user / "datafiles"),
        "HOME": str(user / "home"),
        "PYTHONNOUSERSITE": "1",
        "GENART_CONNECTION_FILE": str(connection),
    }
    env.pop("PYTHONPATH", None)
    env.pop("GENART_SIDECAR", None)
    return env


def lines_of(proc: subprocess.Popen[str]) -> Iterator[str]:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield line.rstrip("\n")


def run_blender(out: Path, zip_path: Path, sd: Path, cn: Path, connection: Path) -> None:
    """dev/demo_blender.py in the bpy wheel; its `demo:` and `genart:` lines are shown,
    everything Blender prints goes to out/demo/blender.log."""
    log_path = out / "blender.log"
    cmd = [
        sys.executable,
        str(BLENDER_SCRIPT),
        "--zip", str(zip_path),
        "--out", str(out),
        "--assets", str(ASSETS),
        "--sd", str(sd),
        "--depth-controlnet", str(cn),
    ]  # fmt: skip
    env = blender_env(out / "blender-user", connection)
    error = ""
    ok = False
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
                if line.startswith("demo: error: "):
                    error = line.removeprefix("demo: error: ")
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


def show(ev: Event) -> None:
    if ev.type == "result":
        say(f"  frame {ev.data.get('frame', 0) + 1}/8 done")
    elif ev.type in ("failed", "cancelled"):
        raise DemoError(f"the sequence job {ev.type}: {ev.data.get('message', ev.data)}")


def save(client: Client, job: str, frame: int, path: Path) -> None:
    img = client.result(job, frame).attachments["image"]
    assert img.shape is not None
    h, w, _ = img.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombuffer("RGBA", (w, h), bytes(img.data), "raw", "RGBA", 0, 1).save(path)


def run_sequence(connection: Path, folder: Path) -> None:
    """8 frames streamed in one by one, through the test engine (test patterns)."""
    with Client.connect(connection, client_name="genart-demo") as c:
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
            save(c, seq, i, folder / f"{i:04d}.png")


def clean(out: Path) -> None:
    """Removes the previous run's results (the models are kept: they are built once)."""
    for name in ("genart", "sequence", "state", "blender-user"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("scene.blend", "scene.blend1", "scene.png", "still.png", "blender.log"):
        (out / name).unlink(missing_ok=True)


def summary(out: Path) -> None:
    def size(p: Path) -> str:
        files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
        n = sum(f.stat().st_size for f in files)
        return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"

    generated = sorted(p for p in (out / "genart").rglob("*") if p.is_file())
    frames = sorted((out / "sequence").glob("*.png"))
    print("\nwritten:")
    for path, what in (
        (out / "scene.png", "the Cycles render of the textured scene"),
        (out / "scene.blend", "the scene, its images beside it under genart/"),
    ):
        print(f"  {rel(path):44} {size(path):>8}  {what}")
    for path in generated:
        what = "generated (its recipe in the PNG)" if path.suffix == ".png" else "depth"
        print(f"  {rel(path):44} {size(path):>8}  {what}")
    print(
        f"  {rel(out / 'sequence') + '/':44} {size(out / 'sequence'):>8}  "
        f"{len(frames)} frames from the test engine"
    )
    print(
        f"  {rel(out / 'models') + '/':44} {size(out / 'models'):>8}  "
        "untrained tiny SD stand-ins (issue 8 brings real micro models)"
    )
    print(
        f"  logs: {rel(out / 'blender.log')}, {rel(out / 'sidecar.log')}, "
        f"{rel(out / 'state' / 'logs')}/"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clean(out)
    print(
        "NOTE: the Stable Diffusion models in this demo are untrained stand-ins (tiny, random\n"
        "weights): they exercise the real pipelines but paint coloured noise. The embedded\n"
        "micro models (issue 8) replace them. The ground's texture is real: texsynth is a\n"
        "procedural engine that needs no model.",
        flush=True,
    )
    sd, cn = build_models(out / "models")
    import build_addon

    zip_path = build_addon.build(out)
    say(f"add-on: built {rel(zip_path)}")
    state = out / "state"
    proc = start_sidecar(state, out / "models", out / "sidecar.log")
    connection = state / "connection.json"
    try:
        with Client.connect(connection, client_name="genart-demo") as c:
            engines = [e["name"] for e in c.welcome["engines"]]
            say(f"sidecar: pid {c.welcome['pid']}, device {c.welcome['device']}, engines {engines}")
        say("Blender (bpy wheel, headless): scene, three genart operators, Cycles render")
        run_blender(out, zip_path, sd, cn, connection)
        say("sequence: 8 frames streamed through the test engine (until the sequence issue)")
        run_sequence(connection, out / "sequence")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    say("done")
    summary(out)
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
