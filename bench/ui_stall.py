"""UI-stall benchmark: the longest main-thread callbacks of the add-on while a job runs.

Blender's UI freezes for as long as a callback on its main thread runs; DESIGN §8 asks
that the main thread never stalls more than 20 ms because of a job. This script measures,
in the `bpy` wheel, with the built add-on zip installed into a throwaway Blender user (as
the tests do):

  tick     `runtime.session().tick()`, called by hand every 16 ms on the main thread
           (timers do not fire while a script blocks) while a job streams progress and
           preview events from a real sidecar subprocess (connect mode, test engines):
           the fake engine (8×8 previews every 4 steps) and a 512² RGBA uint8 preview on
           every step (10 a second), from a bench engine this script registers for the
           sidecar it starts (an entry point in a temporary dist-info, see `PreviewEngine`).
           "(wait)" rows: how late each tick started (the GIL taken back from the
           client's threads, plus the OS waking the thread);
  apply    (baseline: the add-on has no apply step yet) the natural implementation: a
           512² RGBA uint8 preview flipped, turned into float32 and written into a
           `bpy.data.images` image with `pixels.foreach_set`, then `image.update()`;
           alone, then inside the tick as a listener of the 512² preview job, with the
           main thread busy for 1 s now and then (its first tick drains the backlog):
           applying every preview, and applying only the newest one;
  capture  `capture.capture_camera` minus its render (`timings` total − render: settings,
           unique ids, near/far from bounds, the PNG, restore), Cycles at 1 sample, on the
           default scene and with 500 and 2000 more cubes; cProfile of the largest.

Prints n, p50, p99 and max per row (target: max <= 20 ms). Usage (under a minute on
2 vCPUs):

    .venv/bin/python bench/ui_stall.py [--seconds 5] [--objects 500 2000] [--json OUT]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import importlib
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genart_core.engines.base import Engine, Input, Output, RunContext  # noqa: E402
from genart_core.engines.schema import Param  # noqa: E402

TARGET_MS = 20.0
TICK_PERIOD = 0.016  # seconds: one 60 Hz frame
MOD = "bl_ext.user_default.genart"
RESULT = "UISTALL-RESULT "
ENGINE = "uistall"


class PreviewEngine(Engine):
    """The bench's engine: sleeps through its steps and sends a `size`² RGBA uint8 preview
    every `preview_every` steps, the size a TAESD preview of a 512² SD image has. The
    sidecar's worker finds it through a `genart.engines` entry point that `main` writes
    into a temporary dist-info folder on the sidecar's PYTHONPATH."""

    name = ENGINE
    version = "1"
    tasks = ("txt2img",)
    help = "Bench engine: large previews on a schedule. Not a model."
    params = (
        Param("size", "int", 512, "preview side in pixels", min=8, max=4096),
        Param("steps", "int", 50, "steps", min=1, max=10000),
        Param("step_seconds", "float", 0.1, "time each step takes", min=0.0, max=60.0),
        Param("preview_every", "int", 1, "a preview every N steps", min=1, max=10000),
    )

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        n, steps = params["size"], params["steps"]
        image = bytearray(os.urandom(1024)) * (n * n * 4 // 1024 + 1)
        for step in range(steps):
            ctx.progress(step, steps)
            time.sleep(params["step_seconds"])
            if step % params["preview_every"] == params["preview_every"] - 1:
                image[0] = step & 255
                ctx.preview(Output("preview", image[: n * n * 4], "uint8", (n, n, 4)))
        ctx.progress(steps, steps)
        return [Output("image", bytes(4), "uint8", (1, 1, 4))]


# -- this process: the sidecar, the Blender process, the table --------------------------


def _entry_point(folder: Path) -> None:
    """A dist-info that registers PreviewEngine under `genart.engines` (no install)."""
    dist = folder / "genart_bench_uistall-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: genart-bench-uistall\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(f"[genart.engines]\n{ENGINE} = ui_stall:PreviewEngine\n")


def start_sidecar(state: Path, plugins: Path) -> subprocess.Popen[bytes]:
    from genart_core.protocol import ConnectionInfo

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(ROOT / "bench")])}
    cmd = [sys.executable, "-m", "sidecar", "--state-dir", str(state), "--enable-test-engines"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if ConnectionInfo.read(state / "connection.json").pid == proc.pid:
                return proc
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError("sidecar did not start")


def run_blender(tmp: Path, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """This script again with `--child`, in a fresh Python with a throwaway Blender user
    (as tests/test_blender_addon.py's run_in_blender); returns what it reports."""
    sys.path.insert(0, str(ROOT / "dev"))
    import build_addon

    env = build_addon.sandbox_env(tmp / "blender-user", tmp / "home")
    cfg = tmp / "config.json"
    cfg.write_text(json.dumps(config))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(cfg)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith(RESULT)), None)
    if out.returncode != 0 or line is None:
        log = out.stdout[-3000:] + out.stderr[-3000:]
        raise RuntimeError(f"the Blender process failed ({out.returncode}):\n{log}")
    return json.loads(line[len(RESULT) :])


def _stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)

    def q(p: float) -> float:  # nearest rank
        return s[min(len(s) - 1, max(0, round(p * len(s) + 0.5) - 1))]

    return {"n": len(s), "p50": q(0.50), "p99": q(0.99), "max": s[-1]}


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each job")
    ap.add_argument("--objects", type=int, nargs="*", default=[500, 2000])
    ap.add_argument("--preview-size", type=int, default=512)
    ap.add_argument("--preview-rate", type=float, default=10.0, help="previews a second")
    ap.add_argument("--captures", type=int, default=3, help="captures per scene")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.child is not None:
        return child(json.loads(args.child.read_text()))

    sys.path.insert(0, str(ROOT / "dev"))
    import build_addon

    t_start = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="genart-uistall-") as tmp_name:
        tmp = Path(tmp_name)
        addon_zip = build_addon.build(tmp / "addon")
        _entry_point(tmp / "plugins")
        sidecar = start_sidecar(tmp / "state", tmp / "plugins")
        try:
            config = {
                "zip": str(addon_zip),
                "connection_file": str(tmp / "state" / "connection.json"),
                "out": str(tmp / "capture"),
                "seconds": args.seconds,
                "objects": args.objects,
                "preview_size": args.preview_size,
                "preview_rate": args.preview_rate,
                "captures": args.captures,
            }
            res = run_blender(tmp / "blender", config, timeout=600)
        finally:
            sidecar.terminate()
            sidecar.wait(30)
    res["machine"] = _machine()
    res["date"] = datetime.date.today().isoformat()
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["load"] = [round(load, 2), round(os.getloadavg()[0], 2)]  # shared VMs: other work
    print(f"UI stall: main-thread callbacks while a job runs (target: max <= {TARGET_MS:.0f} ms)")
    print(f"  {res['machine']}, bpy {res['bpy']}, {res['date']}")
    print(f"  {'callback':<52} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target")
    for row in res["rows"]:
        st = _stats(row["ms"])
        row.update(st)
        verdict = "pass" if st["max"] <= TARGET_MS else "FAIL"
        print(
            f"  {row['callback']:<52} {st['n']:>5} {st['p50']:>8.2f} {st['p99']:>8.2f}"
            f" {st['max']:>8.2f}  {verdict}"
        )
        if row.get("note"):
            print(f"  {'':<4}{row['note']}")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in res["apply_parts_ms"].items())
    print(f"  apply breakdown (median ms): {parts}")
    prof = res["profile"]
    print(
        f"  capture with {prof['label']} under cProfile: total {prof['total_ms']:.0f} ms, "
        f"render {prof['render_ms']:.0f} ms; cumulative ms:"
    )
    for name, ms in prof["top"]:
        print(f"    {ms:9.1f}  {name}")
    before, after = res["load"]
    print(f"  wall time {res['wall_s']} s, 1-min load average {before} before, {after} after")
    if args.json:
        for row in res["rows"]:
            row["ms"] = [round(v, 3) for v in row["ms"]]
        args.json.write_text(json.dumps(res, indent=2))
    return 0


# -- the Blender process ------------------------------------------------------------------


class Recorder:
    """The session's one listener: counts the current job's events, calls `on_preview`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.preview_bytes = 0
        self.finished = False
        self.on_preview: Any = None

    def reset(self, on_preview: Any = None) -> None:
        self.counts.clear()
        self.preview_bytes = 0
        self.finished = False
        self.on_preview = on_preview

    def __call__(self, ev: Any) -> None:
        self.counts[ev.type] += 1
        if ev.type == "preview" and ev.attachment is not None:
            self.preview_bytes += ev.attachment.view().nbytes
            if self.on_preview is not None:
                self.on_preview(ev.attachment)
        if ev.terminal:
            self.finished = True


def drive(session: Any, rec: Recorder, engine: str, params: dict[str, Any], **kw: Any) -> dict:
    """Submits a job and ticks (see `ticks`) until its terminal event; returns the tick
    durations and what was drained."""
    t0 = time.perf_counter()
    future = session.client.submit(engine, params)
    submit_ms = (time.perf_counter() - t0) * 1000
    run = ticks(session, rec, until_finished=True, **kw)
    job = future.result(5).result["job"]
    assert rec.counts.get("completed") == 1, (job, dict(rec.counts))
    return {**run, "submit_ms": submit_ms, "events": dict(rec.counts)}


def ticks(
    session: Any,
    rec: Recorder,
    *,
    limit: float,
    until_finished: bool,
    busy: tuple[float, float] | None = None,
    after_tick: Any = None,
) -> dict:
    """Ticks every TICK_PERIOD for `limit` seconds or until the job's terminal event (plus
    a few ticks); `after_tick()` runs inside the timed part, after `tick()`.

    Also records how late each tick started: the main thread waking from its sleep has to
    take the GIL back from the client's threads first, a wait Blender's main thread pays
    too before it runs any Python. With `busy` = (every, pause), the main thread stops
    ticking for `pause` seconds after each `every` seconds of ticks (Blender rendering or
    saving a file while the job streams on); the first tick after each pause is recorded
    apart, with the number of events it drained."""
    durations: list[float] = []
    late: list[float] = []
    after_busy: list[float] = []
    drained: list[int] = []
    deadline = time.monotonic() + limit
    after = 5  # ticks after the terminal event
    next_at = time.perf_counter()
    last_pause = next_at
    first_after_pause = False
    while after > 0:
        if time.monotonic() > deadline:
            if not until_finished:
                break
            raise RuntimeError(f"the job did not finish in {limit} s: {dict(rec.counts)}")
        seen = sum(rec.counts.values())
        t0 = time.perf_counter()
        late.append(max(0.0, t0 - next_at) * 1000)
        state = session.tick()
        if after_tick is not None:
            after_tick()
        dt = (time.perf_counter() - t0) * 1000
        if first_after_pause:
            after_busy.append(dt)
            drained.append(sum(rec.counts.values()) - seen)
            first_after_pause = False
        else:
            durations.append(dt)
        if state != "ready":
            raise RuntimeError(f"session is {session.text}")
        if rec.finished:
            after -= 1
        next_at += TICK_PERIOD
        if busy is not None and not rec.finished and next_at - last_pause >= busy[0]:
            time.sleep(busy[1])
            next_at = last_pause = time.perf_counter()
            first_after_pause = True
        time.sleep(max(0.0, next_at - time.perf_counter()))
    return {"ms": durations, "late_ms": late, "after_busy_ms": after_busy, "drained": drained}


def child(cfg: dict[str, Any]) -> int:
    import bpy
    import numpy as np

    result = bpy.ops.extensions.package_install_files(
        repo="user_default", filepath=cfg["zip"], enable_on_install=True
    )
    assert result == {"FINISHED"}, result
    addon = importlib.import_module(MOD)
    settings = importlib.import_module(MOD + ".client.settings")
    capture = importlib.import_module(MOD + ".capture")
    rows: list[dict[str, Any]] = []

    # -- ticks while jobs stream events
    session = addon.runtime.session()
    rec = Recorder()
    session.add_listener(rec)
    session.start(
        settings.EffectiveSettings(
            mode=settings.CONNECT,
            launch_command=(),
            connection_file=cfg["connection_file"],
            address="",
        )
    )
    state = session.wait(30)
    assert state == "ready", session.text
    for _ in range(20):  # the models answer that follows ready
        session.tick()
        time.sleep(0.02)

    seconds, n, rate = cfg["seconds"], cfg["preview_size"], cfg["preview_rate"]
    limit = seconds * 4 + 20
    rec.reset()
    idle = ticks(session, rec, limit=2.0, until_finished=False)
    rows.append(
        {
            "callback": "(wait) tick start lateness, no job",
            "ms": idle["late_ms"],
            "note": "the floor of the lateness rows: the OS waking a sleeping thread here",
        }
    )

    fake = {"steps": 60, "step_seconds": seconds / 60}
    rec.reset()
    run = drive(session, rec, "fake", fake, limit=limit)
    rows.append(
        {
            "callback": "tick, fake engine (progress, 8×8 previews)",
            "ms": run["ms"],
            "note": f"events {run['events']}, submit {run['submit_ms']:.2f} ms",
        }
    )
    rows.append(
        {
            "callback": "(wait) tick start lateness, fake engine",
            "ms": run["late_ms"],
            "note": "",
        }
    )

    big = {"size": n, "steps": round(seconds * rate), "step_seconds": 1 / rate, "preview_every": 1}
    rec.reset()
    run = drive(session, rec, ENGINE, big, limit=limit)
    rows.append(
        {
            "callback": f"tick, {n}² RGBA previews {rate:g}/s",
            "ms": run["ms"],
            "note": f"events {run['events']}, {rec.preview_bytes / 2**20:.0f} MiB of previews",
        }
    )
    rows.append(
        {
            "callback": f"(wait) tick start lateness, {n}² previews {rate:g}/s",
            "ms": run["late_ms"],
            "note": "the GIL taken back from the client's reader thread, plus the OS wake-up",
        }
    )

    image = bpy.data.images.new("genart bench preview", n, n, alpha=True)
    parts: dict[str, list[float]] = {"to float32": [], "foreach_set": [], "update": []}

    def apply(view: memoryview) -> None:
        """The natural apply: Blender's rows go bottom-up, its pixels are float RGBA."""
        t0 = time.perf_counter()
        rgba = np.frombuffer(view, dtype=np.uint8).reshape(n, n, 4)[::-1]
        pixels = rgba.astype(np.float32)  # (n, n, 4), C-contiguous
        pixels *= 1.0 / 255.0
        t1 = time.perf_counter()
        image.pixels.foreach_set(pixels.ravel())
        t2 = time.perf_counter()
        image.update()
        t3 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[key].append(dt * 1000)

    frames = [np.random.default_rng(i).integers(0, 256, (n, n, 4), np.uint8) for i in range(4)]
    apply_ms = []
    for i in range(40):
        t0 = time.perf_counter()
        apply(memoryview(frames[i % 4]).cast("B"))
        apply_ms.append((time.perf_counter() - t0) * 1000)
    rows.append(
        {
            "callback": f"apply {n}² preview → bpy image (baseline)",
            "ms": apply_ms,
            "note": "uint8 → float32, pixels.foreach_set, image.update(); not add-on code yet",
        }
    )
    apply_parts = {k: _median(v) for k, v in parts.items()}

    # The same apply inside the tick, once per preview event, with the main thread busy
    # for 1 s now and then; then keeping only the newest preview and applying it once.
    busy = (0.5, 1.0)
    long = {**big, "steps": round(2 * seconds * rate)}
    rec.reset(on_preview=lambda att: apply(att.view()))
    run = drive(session, rec, ENGINE, long, limit=2 * limit, busy=busy)
    rows.append(
        {
            "callback": "tick, apply in the listener per preview (baseline)",
            "ms": run["ms"],
            "note": f"events {run['events']}",
        }
    )
    rows.append(
        {
            "callback": "  same, first tick after 1 s busy",
            "ms": run["after_busy_ms"],
            "note": f"events drained by each: {run['drained']}",
        }
    )

    newest: list[Any] = []

    def apply_newest() -> None:
        if newest:
            apply(newest[-1].view())
            newest.clear()

    rec.reset(on_preview=newest.append)
    run = drive(session, rec, ENGINE, long, limit=2 * limit, busy=busy, after_tick=apply_newest)
    rows.append(
        {
            "callback": "  newest preview only, first tick after 1 s busy",
            "ms": run["after_busy_ms"],
            "note": f"events drained by each: {run['drained']}; steady ticks: "
            f"max {max(run['ms']):.2f} ms",
        }
    )
    session.stop()

    # -- capture's main-thread work, without the render
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.cycles.device = "CPU"
    mesh = bpy.data.objects["Cube"].data
    rng = np.random.default_rng(0)
    out = Path(cfg["out"])
    capture.capture_camera(scene, out / "warm", width=64, height=48)  # first render's setup
    # near/far is the one numpy step per object: time it inside the capture (capture looks
    # the function up in its module at each call, so a wrapper there sees every call).
    near_far, near_far_ms = capture.near_far, []

    def timed_near_far(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return near_far(*a, **kw)
        finally:
            near_far_ms.append((time.perf_counter() - t0) * 1000)

    added = 0
    for total in [0, *cfg["objects"]]:
        for i in range(added, total):
            ob = bpy.data.objects.new(f"bench cube {i}", mesh)
            ob.location = (*rng.uniform(-3, 3, 2), rng.uniform(-1, 1))
            ob.scale = (0.05, 0.05, 0.05)
            scene.collection.objects.link(ob)
        added = max(added, total)
        label = "default scene (1 cube)" if total == 0 else f"{total} more cubes"
        ms, renders = [], []
        near_far_ms.clear()
        capture.near_far = timed_near_far
        for _ in range(cfg["captures"]):
            cap = capture.capture_camera(scene, out / str(total), width=128, height=96)
            ms.append((cap.timings["total"] - cap.timings["render"]) * 1000)
            renders.append(cap.timings["render"] * 1000)
        capture.near_far = near_far
        rows.append(
            {
                "callback": f"capture minus render, {label}",
                "ms": ms,
                "note": f"of which near_far {_median(near_far_ms):.1f} ms (median); "
                f"render {_median(renders):.0f} ms, not counted; {len(cap.ids)} ids",
            }
        )

    # Where the largest scene's time goes (cProfile slows the numpy-heavy parts down, so
    # read the shares, not the absolute figures).
    prof = cProfile.Profile()
    prof.enable()
    cap = capture.capture_camera(scene, out / "profile", width=128, height=96)
    prof.disable()
    stats = pstats.Stats(prof)
    top = []
    for (filename, line, func), row in stats.stats.items():  # type: ignore[attr-defined]
        if "capture.py" in filename or func in ("render", "save_render", "solve", "inv"):
            top.append((f"{Path(filename).name}:{line} {func}", row[3] * 1000))
    top.sort(key=lambda x: -x[1])
    profile = {
        "label": label,
        "total_ms": cap.timings["total"] * 1000,
        "render_ms": cap.timings["render"] * 1000,
        "top": top[:12],
    }

    print(
        RESULT
        + json.dumps(
            {
                "bpy": bpy.app.version_string,
                "rows": rows,
                "apply_parts_ms": apply_parts,
                "profile": profile,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
