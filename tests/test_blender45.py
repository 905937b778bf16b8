"""The smoke test on the oldest Blender the add-on supports: the `bpy` 4.5 LTS wheel.

The full suite runs on the 5.0 wheel in `.venv`; this file runs one script in
`.venv-bpy45` (built by dev/env.sh: bpy 4.5 and its own dependencies, nothing of the
project) with the same import blocker, Blender user sandbox and zip as
test_blender_addon.py: install and enable through the extension system, register and
unregister, check a sidecar that is not there, and capture the default scene. DESIGN §9:
"a smoke test (register, capture, apply) on the bpy 4.5 LTS wheel"; apply joins it when
the add-on has it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, SidecarProcess
from test_blender_addon import CAPTURE, INSTALL, build_addon, check_capture, run_in_blender

pytestmark = [pytest.mark.blender, pytest.mark.process]

PYTHON45 = ROOT / ".venv-bpy45" / "bin" / "python"
CHECK_SECONDS = 25.0  # the operator's own bound is 15 s; a hang shows as more than this


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_addon.build(tmp_path_factory.mktemp("addon"))


# After INSTALL (install, enable, preferences, register/unregister twice, disable/enable):
# the Check sidecar operator with no sidecar, a stopped one and a launch command that does
# not exist. Each must end CANCELLED with one line saying how to configure, in bounded time.
CHECK_45 = """
import time
assert bpy.app.version[:2] == (4, 5), bpy.app.version_string
print("BLENDER", bpy.app.version_string)
addon = importlib.import_module(MOD)  # the module object INSTALL's disable/enable left

def check(var, value):
    for name in ("GENART_SIDECAR", "GENART_CONNECTION_FILE"):
        os.environ.pop(name, None)
    os.environ[var] = value
    t0 = time.monotonic()
    try:
        result, report = bpy.ops.genart.check_sidecar(), ""
    except RuntimeError as exc:  # bpy.ops raises the operator's ERROR report
        result, report = {"CANCELLED"}, str(exc)
    spent = time.monotonic() - t0
    print(var, value, result, f"{spent:.1f} s", repr(report))
    assert result == {"CANCELLED"}, (result, report)
    assert spent < CHECK_SECONDS, f"check_sidecar took {spent:.1f} s"
    assert "Sidecar not reachable" in report, report
    assert "Preferences > Add-ons > genart" in report and var in report, report
    assert "Traceback" not in report, report
    state = addon.runtime.session().state
    assert state in ("restarting", "dead", "stopped"), addon.runtime.session().text
    return report

report = check("GENART_CONNECTION_FILE", MISSING)
assert "cannot reach the sidecar" in report, report
report = check("GENART_CONNECTION_FILE", STALE)
assert "cannot reach the sidecar" in report, report
check("GENART_SIDECAR", NO_SUCH_COMMAND)
assert addon.ui.panel.sidecar_state_text(bpy.context) != "", "panel text empty"
for name in ("GENART_SIDECAR", "GENART_CONNECTION_FILE"):
    os.environ.pop(name, None)
"""

# Stylize renders' passes on 4.5 (scene.node_tree, File Output's layer_slots, "IndexOB"):
# the toggle adds and removes the node; the render writes every pass the engine reads.
PASSES_45 = """
sc = bpy.context.scene
rp = importlib.import_module(MOD + ".render_passes")
sc.genart.stylize_renders = True
assert rp.NODE in [n.name for n in sc.node_tree.nodes], "no passes node"
sc.genart.stylize_renders = False
assert not sc.use_nodes, "the compositor made for the passes stayed"
sc.render.engine = "CYCLES"
sc.cycles.samples = 1
sc.render.resolution_x, sc.render.resolution_y, sc.render.resolution_percentage = 32, 24, 100
sc.frame_start, sc.frame_end = 1, 2
sc.render.filepath = os.path.join(OUT, "hook", "shot_")
sc.render.image_settings.file_format = "PNG"
rp.ensure(sc)
bpy.ops.render.render(animation=True)
path = rp.passes_path(sc, 2)
oiio = addon.compat.openimageio()
inp = oiio.ImageInput.open(str(path))
channels = sorted(inp.spec().channelnames)
inp.close()
print("PASSES-45", channels)
for c in ("Depth.V", "Object Index.V", "Vector.X", "Vector.W", "Normal.Z"):
    assert c in channels, (c, channels)
assert rp.remove(sc) and not sc.use_nodes
"""

FINISH = """
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not heavy and not refused, (heavy, refused)
bpy.ops.preferences.addon_disable(module=MOD)
assert addon.runtime.RUNTIME.session is None
print("GENART-45-OK")
"""


def stale_connection_file(tmp_path: Path) -> Path:
    """The connection file of a sidecar that was killed: its socket is left behind too."""
    sc = SidecarProcess(tmp_path / "state").start()
    try:
        data = sc.connection_file.read_bytes()
    finally:
        sc.kill()
    stale = tmp_path / "stale" / "connection.json"
    stale.parent.mkdir()
    stale.write_bytes(data)
    return stale


def test_register_check_and_capture_in_blender_45(addon_zip: Path, tmp_path: Path) -> None:
    assert PYTHON45.is_file(), f"{PYTHON45} is missing: `source dev/env.sh` builds it"
    body = (
        f"MISSING = {str(tmp_path / 'missing' / 'connection.json')!r}\n"
        f"STALE = {str(stale_connection_file(tmp_path))!r}\n"
        f"NO_SUCH_COMMAND = {str(tmp_path / 'no-such-dir' / 'genart-sidecar')!r}\n"
        f"CHECK_SECONDS = {CHECK_SECONDS!r}\n"
        f"OUT = {str(tmp_path / 'capture')!r}\n" + INSTALL + CHECK_45 + CAPTURE + PASSES_45 + FINISH
    )
    out = run_in_blender(tmp_path, addon_zip, body, timeout=240, python=PYTHON45)
    log = out.stdout[-4000:] + out.stderr[-4000:]
    assert out.returncode == 0 and "GENART-45-OK" in out.stdout, log
    assert "GENART-ADDON-OK" in out.stdout and "BLENDER 4.5." in out.stdout, log
    check_capture(out.stdout)
