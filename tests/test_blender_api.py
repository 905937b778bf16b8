"""The script API (blender_addon/api.py) in the `bpy` wheel against a real sidecar: connect,
choose an engine and its parameters, run an action blocking, and errors as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SidecarProcess
from test_blender_addon import build_addon, run_in_blender

pytestmark = [pytest.mark.blender, pytest.mark.process]

SCRIPT = """
import importlib
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
assert bpy.ops.extensions.package_install_files(
    repo="user_default", filepath=ZIP, enable_on_install=True
) == {"FINISHED"}
api = importlib.import_module("bl_ext.user_default.genart.api")
bpy.ops.mesh.primitive_plane_add(size=4)
bpy.context.object.name = "Ground"
bpy.ops.mesh.primitive_cube_add()
welcome = api.connect(CONNECTION)
assert "texsynth" in [e["name"] for e in welcome["engines"]], welcome["engines"]
assert api.use("txt2img", "texsynth", seed=5) == "texsynth"
api.tileable(["Ground"], size=64, mapping="BOX")
ground = bpy.data.objects["Ground"]
print("GROUND", [s.material.name for s in ground.material_slots])
cube = bpy.data.objects["Cube"]
print("CUBE", [s.material.name if s.material else None for s in cube.material_slots])
for call in (
    lambda: api.use("txt2img", "texsynth", no_such_param=1),
    lambda: api.use("painting"),
    lambda: api.use("txt2img", "nope"),
    lambda: api.use("txt2img", "texsynth", seed=-5),
):
    try:
        call()
    except api.GenartScriptError as exc:
        print("ERROR", str(exc).replace(chr(10), " "))
    else:
        print("ERROR none")
print("GENART-API-OK")
"""


def test_the_script_api(tmp_path: Path) -> None:
    sc = SidecarProcess(tmp_path / "state").start()
    try:
        body = f"CONNECTION = {str(sc.connection_file)!r}\n" + SCRIPT
        proc = run_in_blender(tmp_path, build_addon.build(tmp_path / "zip"), body, timeout=200)
    finally:
        sc.stop()
    log = proc.stdout[-4000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and "GENART-API-OK" in proc.stdout, log
    lines = proc.stdout.splitlines()
    ground = next(x for x in lines if x.startswith("GROUND"))
    assert "tileable" in ground, ground
    assert next(x for x in lines if x.startswith("CUBE")) == "CUBE []"  # only what was named
    errors = [x for x in lines if x.startswith("ERROR")]
    assert len(errors) == 4 and "ERROR none" not in errors, errors
    assert "no_such_param" in errors[0] and "painting" in errors[1] and "nope" in errors[2]
    assert "seed" in errors[3], errors[3]
    assert any(x.startswith("genart: tileable texture: done") for x in lines), log
