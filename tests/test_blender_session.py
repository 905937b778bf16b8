"""The add-on's `Session` against real sidecar subprocesses, and the Check sidecar operator
inside the `bpy` wheel.

The session tests load `client/session.py` from the built zip as a plain package, without
the add-on's `__init__` (which imports `bpy`), and drive `tick()` by hand with bounded loops,
as headless code in `blender -b` has to.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import SidecarProcess
from test_blender_addon import build_addon, run_in_blender

pytestmark = [pytest.mark.blender, pytest.mark.process]

PKG = "genart_addon_nobpy"
SIDECAR_CMD = (sys.executable, "-m", "sidecar")
FAST = {"backoff": (0.2,), "client_options": {"ping_interval": 0.3, "max_missed": 3}}


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_addon.build(tmp_path_factory.mktemp("addon"))


@pytest.fixture(scope="module")
def sess(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """blender_addon/client/session.py from the zip, its package's __init__ never run."""
    root = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(addon_zip) as zf:
        zf.extractall(root)
    assert "import bpy" not in (root / "client" / "session.py").read_text()
    pkg = types.ModuleType(PKG)
    pkg.__path__ = [str(root)]
    sys.modules[PKG] = pkg
    module = importlib.import_module(PKG + ".client.session")
    yield module
    for name in [n for n in sys.modules if n == PKG or n.startswith(PKG + ".")]:
        del sys.modules[name]


def settings(sess: ModuleType, mode: str, **kw: object) -> object:
    mod = sys.modules[PKG + ".client.settings"]
    values = {"launch_command": SIDECAR_CMD, "connection_file": "", "address": "", **kw}
    return mod.EffectiveSettings(mode=mode, **values)


def drive(session: object, until: set[str], timeout: float) -> list[str]:
    """Ticks by hand until the state is in `until`; returns the states seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = session.tick()  # type: ignore[attr-defined]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in until:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"still {seen[-1]!r} after {timeout} s ({seen}): {session.text}")  # type: ignore[attr-defined]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_connect_mode_reaches_ready_with_engines(sess: ModuleType, tmp_path: Path) -> None:
    sc = SidecarProcess(tmp_path / "state").start()
    try:
        s = sess.Session(**FAST)
        s.start(settings(sess, "CONNECT", connection_file=str(sc.connection_file)))
        assert s.state == sess.STARTING
        drive(s, {sess.READY, sess.DEAD}, 10)
        assert s.state == sess.READY, s.text
        assert "fake" in s.engine_names() and s.pid == sc.proc.pid and not s.owned
        assert s.text.startswith("ready: ") and "engines " in s.text and "fake" in s.text
        s.stop()
        assert s.state == sess.STOPPED and s.text == sess.NOT_CONNECTED
        assert sc.proc.poll() is None, "stop() must leave a sidecar it did not start running"
    finally:
        sc.stop()


def test_connect_by_host_port_with_a_copied_connection_file(
    sess: ModuleType, tmp_path: Path
) -> None:
    """A sidecar on another machine: TCP host:port, the token from a copy of its file."""
    sc = SidecarProcess(tmp_path / "state", ["--tcp", "127.0.0.1:0"]).start()
    try:
        info = sess.ConnectionInfo.read(sc.connection_file)
        assert info.address.transport == "tcp"
        address = f"{info.address.host}:{info.address.port}"
        copy = tmp_path / "copied" / "connection.json"
        copy.parent.mkdir()
        copy.write_bytes(sc.connection_file.read_bytes())
        s = sess.Session(**FAST)
        s.start(settings(sess, "CONNECT", connection_file=str(copy), address=address))
        drive(s, {sess.READY, sess.DEAD}, 10)
        assert s.state == sess.READY and s.pid == sc.proc.pid and "fake" in s.engine_names()
        s.stop()

        # Without the token: a clear reason naming what to set, and no hang.
        s = sess.Session(backoff=(0.01,), max_restarts=1)
        s.start(
            settings(sess, "CONNECT", connection_file=str(tmp_path / "none.json"), address=address)
        )
        drive(s, {sess.DEAD, sess.READY}, 10)
        assert s.state == sess.DEAD and "needs the sidecar's token" in s.reason, s.text
        s.stop()
    finally:
        sc.stop()


def test_launch_restarts_a_killed_sidecar_then_stop_ends_it(
    sess: ModuleType, tmp_path: Path
) -> None:
    s = sess.Session(state_dir=tmp_path / "state", extra_args=["--enable-test-engines"], **FAST)
    try:
        s.start(settings(sess, "LAUNCH"))
        drive(s, {sess.READY, sess.DEAD}, 20)
        assert s.state == sess.READY and s.owned, s.text
        first = s.pid
        assert first == s.proc.pid and "fake" in s.engine_names()
        cmdline = Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")
        assert b"--parent-pid" in cmdline and str(os.getpid()).encode() in cmdline
        token = sess.ConnectionInfo.read(s.connection_file).token.encode()
        assert not any(token in arg for arg in cmdline), "token on the command line"

        os.kill(first, signal.SIGKILL)
        seen = drive(s, {sess.RESTARTING, sess.DEAD}, 5)
        assert seen[-1] == sess.RESTARTING and s.restarts == 1, (seen, s.text)
        assert s.text.startswith("restarting (1/5): ")
        seen = drive(s, {sess.READY, sess.DEAD}, 20)
        assert s.state == sess.READY, (seen, s.text)
        second = s.pid
        assert second is not None and second != first and s.owned

        s.stop()
        assert s.state == sess.STOPPED and gone(second), "the owned sidecar is still running"
    finally:
        s.stop()


def test_launch_uses_the_state_folder_and_model_folders_of_the_settings(
    sess: ModuleType, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "some-lora.safetensors").parent.mkdir()
    (models / "some-lora.safetensors").write_bytes(b"not really")  # listed as a file
    s = sess.Session(extra_args=["--enable-test-engines"], **FAST)
    try:
        state = tmp_path / "chosen-state"
        s.start(settings(sess, "LAUNCH", state_dir=str(state), models=(str(models),)))
        drive(s, {sess.READY, sess.DEAD}, 20)
        assert s.state == sess.READY and s.owned, s.text
        assert s.connection_file == state / "connection.json" and s.connection_file.is_file()
        deadline = time.monotonic() + 10
        while s.models is None and time.monotonic() < deadline:
            s.tick()
            time.sleep(0.02)
        assert [m["path"] for m in s.models or []] == [str(models / "some-lora.safetensors")]
        assert s.models_text.startswith("1 models: "), s.models_text
    finally:
        s.stop()


def test_a_hung_sidecar_is_found_unresponsive_and_replaced(
    sess: ModuleType, tmp_path: Path
) -> None:
    s = sess.Session(state_dir=tmp_path / "state", extra_args=["--enable-test-engines"], **FAST)
    try:
        s.start(settings(sess, "LAUNCH"))
        drive(s, {sess.READY, sess.DEAD}, 20)
        first = s.pid
        os.kill(first, signal.SIGSTOP)  # alive but silent: only a missed ping tells
        drive(s, {sess.RESTARTING, sess.DEAD}, 5)
        assert "not answered" in s.reason, s.text
        drive(s, {sess.READY, sess.DEAD}, 20)
        assert s.state == sess.READY and s.pid != first, s.text
        assert gone(first), "the hung sidecar was left behind"
    finally:
        s.stop()


def test_launch_when_a_sidecar_holds_the_state_dir_connects_to_it(
    sess: ModuleType, tmp_path: Path
) -> None:
    sc = SidecarProcess(tmp_path / "state").start()
    try:
        s = sess.Session(state_dir=tmp_path / "state", **FAST)
        s.start(settings(sess, "LAUNCH"))
        drive(s, {sess.READY, sess.DEAD}, 20)
        assert s.state == sess.READY and s.pid == sc.proc.pid and not s.owned, s.text
        s.stop()
        assert sc.proc.poll() is None
    finally:
        sc.stop()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("/nonexistent/genart-sidecar",), "cannot run '/nonexistent/genart-sidecar'"),
        ((sys.executable, "-c", "import sys; print('no torch here'); sys.exit(1)"), "code 1"),
    ],
)
def test_a_sidecar_that_cannot_start_ends_dead_with_its_reason(
    sess: ModuleType, tmp_path: Path, command: tuple[str, ...], expected: str
) -> None:
    s = sess.Session(state_dir=tmp_path / "state", backoff=(0.01, 0.02), max_restarts=3)
    s.start(settings(sess, "LAUNCH", launch_command=command))
    seen = drive(s, {sess.DEAD, sess.READY}, 10)
    assert s.state == sess.DEAD and sess.RESTARTING in seen, (seen, s.text)
    assert s.restarts == 3 and "gave up after 3 restarts" in s.reason, s.text
    assert expected in s.text, s.text
    if command[0] == sys.executable:
        assert "no torch here" in s.text, s.text
    s.stop()
    assert s.state == sess.STOPPED


def test_connect_to_a_missing_sidecar_is_dead_after_the_cap(
    sess: ModuleType, tmp_path: Path
) -> None:
    s = sess.Session(backoff=(0.01,), max_restarts=2)
    s.start(settings(sess, "CONNECT", connection_file=str(tmp_path / "none.json")))
    seen = drive(s, {sess.DEAD, sess.READY}, 10)
    assert seen[-1] == sess.DEAD and "cannot reach the sidecar" in s.reason, (seen, s.text)


CHECK = """
import importlib
import os
import bpy

MOD = "bl_ext.user_default.genart"
assert bpy.ops.extensions.package_install_files(
    repo="user_default", filepath=ZIP, enable_on_install=True
) == {"FINISHED"}
addon = importlib.import_module(MOD)

def check():
    try:
        return bpy.ops.genart.check_sidecar(), ""
    except RuntimeError as exc:  # bpy.ops raises the operator's ERROR report
        return {"CANCELLED"}, str(exc)

os.environ["GENART_CONNECTION_FILE"] = MISSING
result, report = check()
print("MISSING:", result, repr(report), addon.ui.panel.sidecar_state_text(bpy.context))
assert result == {"CANCELLED"}, result
assert "Sidecar not reachable" in report and "cannot reach the sidecar" in report, report
assert "Preferences > Add-ons > genart" in report and "GENART_CONNECTION_FILE" in report, report
assert addon.runtime.session().state in ("restarting", "dead"), addon.runtime.session().text

os.environ["GENART_CONNECTION_FILE"] = RUNNING
result, report = check()
text = addon.ui.panel.sidecar_state_text(bpy.context)
print("RUNNING:", result, repr(report), text)
assert result == {"FINISHED"}, (result, report)
assert text.startswith("ready: ") and "fake" in text, text
assert addon.runtime.session().pid == PID, addon.runtime.session().pid
full = addon.operators.check_sidecar.check_text(addon.runtime.session(), None)
print("CHECK:", full)
assert "1 models: sd1 base ×1" in full, full  # listed by the check, from --models
assert "device memory known once a job" in full or "GiB free" in full, full

bpy.ops.preferences.addon_disable(module=MOD)
assert addon.runtime.RUNTIME.session is None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not heavy and not refused, (heavy, refused)
print("GENART-CHECK-OK")
"""


def test_check_sidecar_operator_in_blender(addon_zip: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    pipe = models / "tiny-sd"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (pipe / "unet" / "config.json").write_text(
        '{"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768}'
    )
    sc = SidecarProcess(
        tmp_path / "state", ["--models", str(models)], env={"HF_HUB_CACHE": str(tmp_path / "hub")}
    ).start()
    try:
        body = (
            f"MISSING = {str(tmp_path / 'missing' / 'connection.json')!r}\n"
            f"RUNNING = {str(sc.connection_file)!r}\n"
            f"PID = {sc.proc.pid}\n" + CHECK
        )
        out = run_in_blender(tmp_path, addon_zip, body, timeout=120)
        log = out.stdout[-4000:] + out.stderr[-4000:]
        assert out.returncode == 0 and "GENART-CHECK-OK" in out.stdout, log
        assert sc.proc.poll() is None, "the add-on stopped a sidecar it did not start"
    finally:
        sc.stop()


# -- Jobs (client/jobs.py): submit, follow, fetch, cancel, survive a restart --------------


def jobs_module() -> ModuleType:
    return sys.modules["genart_addon_nobpy.client.jobs"]  # loaded with the session module


def launched(sess: ModuleType, tmp_path: Path) -> object:
    s = sess.Session(state_dir=tmp_path / "state", extra_args=["--enable-test-engines"], **FAST)
    s.start(settings(sess, "LAUNCH"))
    drive(s, {sess.READY, sess.DEAD}, 20)
    assert s.state == sess.READY, s.text
    return s


def test_a_job_runs_with_progress_previews_and_its_result(sess: ModuleType, tmp_path: Path) -> None:
    jobs = jobs_module()
    s = launched(sess, tmp_path)
    try:
        seen: list[tuple[str, int]] = []
        s.jobs.add_listener(lambda j: seen.append((j.state, j.step)))
        t0 = time.monotonic()
        job = s.jobs.submit(
            "fake", {"width": 24, "height": 16, "steps": 8, "step_seconds": 0.05}, label="test"
        )
        assert time.monotonic() - t0 < 0.05 and job.state == jobs.SUBMITTING  # never blocks
        texts = set()
        s.jobs.wait(job, timeout=30, on_update=lambda j: texts.add(j.text))
        assert job.state == jobs.DONE, job.text
        assert job.id and job.fraction == 1.0 and job.preview_count == 2
        img = job.result.attachments["image"]
        assert img.shape == (16, 24, 4) and len(img.data) == 16 * 24 * 4
        assert any(t.startswith("step ") for t in texts), texts
        states = [st for st, _ in seen]
        assert states.index(jobs.QUEUED) < states.index(jobs.RUNNING) < states.index(jobs.DONE)
        assert job.preview is not None and job.preview.shape == (8, 8, 4)
    finally:
        s.stop()


def test_errors_name_the_field_and_cancel_settles(sess: ModuleType, tmp_path: Path) -> None:
    jobs = jobs_module()
    s = launched(sess, tmp_path)
    try:
        bad = s.jobs.wait(s.jobs.submit("fake", {"steps": -3}), timeout=10)
        assert bad.state == jobs.FAILED and bad.error_field == "params.steps", bad.error
        assert "fix params.steps" in bad.error and bad.id is None
        failed = s.jobs.wait(s.jobs.submit("fake", {"steps": 2, "mode": "fail"}), timeout=20)
        assert failed.state == jobs.FAILED and "failed as asked" in failed.error
        assert failed.error_field == "params.mode" and "allowed" in failed.error

        slow = s.jobs.submit("fake", {"steps": 200, "step_seconds": 0.05})
        deadline = time.monotonic() + 20
        while slow.state != jobs.RUNNING and time.monotonic() < deadline:
            s.tick()
            time.sleep(0.02)
        s.jobs.cancel(slow)
        s.jobs.wait(slow, timeout=20)
        assert slow.state == jobs.CANCELLED and slow.result is None
    finally:
        s.stop()


def test_not_ready_fails_at_once_with_the_reason(sess: ModuleType) -> None:
    jobs = jobs_module()
    s = sess.Session()
    job = s.jobs.submit("fake", {})
    assert job.state == jobs.FAILED and "not ready" in job.error and "not connected" in job.error


def test_a_job_outlives_its_sidecar_being_killed(sess: ModuleType, tmp_path: Path) -> None:
    """Jobs survive a sidecar crash: the restarted sidecar recovers the job from its
    disk, the session reconnects and the job is watched again until its result."""
    jobs = jobs_module()
    s = launched(sess, tmp_path)
    try:
        job = s.jobs.submit("fake", {"width": 8, "height": 8, "steps": 30, "step_seconds": 0.05})
        deadline = time.monotonic() + 20
        while job.step < 5 and time.monotonic() < deadline:
            s.tick()
            time.sleep(0.02)
        first = s.pid
        os.kill(first, signal.SIGKILL)
        s.jobs.wait(job, timeout=60)
        assert job.state == jobs.DONE, (job.text, s.text)
        assert s.pid != first and s.restarts >= 1
        pixels = np.frombuffer(job.result.attachments["image"].data, np.uint8)
        assert pixels.size == 8 * 8 * 4
    finally:
        s.stop()


def test_a_sequence_streams_frames_in_and_results_out(sess: ModuleType, tmp_path: Path) -> None:
    jobs = jobs_module()
    att = sys.modules["genart_addon_nobpy._vendor.genart_protocol"].Attachment
    s = launched(sess, tmp_path)
    try:
        job = s.jobs.submit_sequence("fake", {"steps": 2}, task="sequence", frames=4)
        frames = {}
        for i in range(4):
            rgba = np.full((6, 5, 4), 10 * i, np.uint8)
            frames[i] = rgba
            params = {"steps": -1} if i == 2 else {"seed": i}  # frame 2 is refused
            s.jobs.append(
                job, i, {"image": att.array("image", rgba, "uint8", rgba.shape, "srgb")}, params
            )
        s.jobs.close(job)
        assert job.id is None  # appends wait for the id: nothing blocked
        got = {}
        s.jobs.wait(job, timeout=60, on_update=lambda j: got.update(j.take_frames()))
        got.update(job.take_frames())
        assert job.state == jobs.DONE, job.text
        assert sorted(got) == [0, 1, 3] and list(job.frame_errors) == [2], (got, job.frame_errors)
        assert "params.steps" in job.frame_errors[2]
        for i, reply in got.items():
            img = np.frombuffer(reply.attachments["image"].data, np.uint8).reshape(6, 5, 4)
            assert (img[..., :3] == 255 - 10 * i).all()  # the fake engine inverts its input
        assert job.frames_done == 4 and job.fraction == 1.0
    finally:
        s.stop()


def test_a_welcome_before_the_engines_waits_for_them(sess: ModuleType, tmp_path: Path) -> None:
    """The worker is slow to start (a sitecustomize sleeping in it only): the welcome comes
    with engines_ready false and no engines; the session stays `starting`, pings, and says
    hello again once they are ready, so whoever waits for `ready` gets the engines."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\nif '--server-pid' in sys.argv:\n    time.sleep(4)\n"
    )
    sc = SidecarProcess(tmp_path / "state", env={"PYTHONPATH": str(slow)}).start()
    try:
        s = sess.Session()  # default liveness: hello itself waits up to 2 s for the worker
        s.start(settings(sess, "CONNECT", connection_file=str(sc.connection_file)))
        seen = []
        deadline = time.monotonic() + 60
        while s.state not in (sess.READY, sess.DEAD) and time.monotonic() < deadline:
            s.tick()
            if not seen or seen[-1][0] != s.state:
                seen.append((s.state, s.reason))
            time.sleep(0.01)
        assert s.state == sess.READY, seen
        assert s.welcome["engines_ready"] is True and "fake" in s.engine_names()
        assert all(st != sess.RESTARTING for st, _ in seen), seen  # waited, did not fail
        s.stop()
    finally:
        sc.stop()
