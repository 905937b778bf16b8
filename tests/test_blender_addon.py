"""The Blender extension: its zip installs and registers in the `bpy` wheel with no model
library, sidecar or genart_core importable; its settings honour the environment; the
protocol it carries is byte-identical to genart_core/protocol."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from genart_core.imaging.passes import object_ids, read_passes

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "genart_core" / "protocol"
BLOCKED = ("torch", "diffusers", "transformers", "sidecar", "genart_core")

pytestmark = pytest.mark.blender


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build_addon = load(ROOT / "dev" / "build_addon.py", "genart_build_addon")
settings = load(ROOT / "blender_addon" / "client" / "settings.py", "genart_addon_settings")


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_addon.build(tmp_path_factory.mktemp("addon"))


# Runs before anything else in the Blender process: refuses the names the add-on must never
# need, so an import of any of them fails the install instead of passing quietly.
BLOCKER = f"""
import sys
BLOCKED = {BLOCKED!r}
refused = []
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            refused.append(name)
            raise ImportError(f"blocked in this test: {{name}}")
        return None
sys.meta_path.insert(0, Blocker())
"""

INSTALL = """
import importlib
import os
for name in BLOCKED:  # the blocker itself works
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"blocker let {name} through")
refused.clear()

import bpy
MOD = "bl_ext.user_default.genart"
result = bpy.ops.extensions.package_install_files(
    repo="user_default", filepath=ZIP, enable_on_install=True
)
assert result == {"FINISHED"}, result
addon = importlib.import_module(MOD)
assert MOD in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
prefs = bpy.context.preferences.addons[MOD].preferences
assert type(prefs).__name__ == "GENART_AddonPreferences", type(prefs)
assert prefs.sidecar_mode == "LAUNCH", prefs.sidecar_mode
assert prefs.effective().launch_command == ("genart-sidecar",), prefs.effective()
os.environ["GENART_SIDECAR"] = "gpu-box:7777"
assert (prefs.effective().mode, prefs.effective().address) == ("CONNECT", "gpu-box:7777")
del os.environ["GENART_SIDECAR"]
assert MOD + "._vendor.genart_protocol" in sys.modules, "vendored protocol not loaded"
assert addon.client.Client.__module__ == MOD + "._vendor.genart_protocol.client"

def registered():
    prefs_cls = addon.preferences.GENART_AddonPreferences
    return hasattr(bpy.types, "VIEW3D_PT_genart"), prefs_cls.is_registered

assert registered() == (True, True), registered()
panel = bpy.types.VIEW3D_PT_genart
assert (panel.bl_space_type, panel.bl_region_type, panel.bl_label) == ("VIEW_3D", "UI", "genart")
assert addon.ui.panel.sidecar_state_text(bpy.context) == "not connected"
for _ in range(2):
    addon.unregister()
    assert registered() == (False, False), registered()
    addon.register()
    assert registered() == (True, True), registered()
assert bpy.context.preferences.addons[MOD].preferences is not None
bpy.ops.preferences.addon_disable(module=MOD)
assert registered() == (False, False), registered()
bpy.ops.preferences.addon_enable(module=MOD)
assert registered() == (True, True), registered()

heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not heavy and not refused, (heavy, refused)
print("GENART-ADDON-OK")
"""


# The capture step: the add-on's `capture.capture_camera` on the default scene (cube,
# light, camera) into OUT, with Cycles at one sample and with Workbench (colour from it, the
# data passes from its one-sample Cycles fallback); the scene is left as it was each time.
# EEVEE (the default engine) is left out: its first render compiles
# shaders for ~40 s here. The pytest side reads the files back (no EXR reader in Blender).
CAPTURE = """
import json
from pathlib import Path
capture = importlib.import_module(MOD + ".capture")
scene = bpy.context.scene
scene.cycles.samples = 1
scene.cycles.use_denoising = False
scene.cycles.device = "CPU"
cube = bpy.data.objects["Cube"]

def settings():
    r = scene.render
    return (
        r.engine, r.filepath, r.image_settings.file_format, r.image_settings.color_depth,
        r.resolution_x, r.resolution_y, scene.cycles.samples, cube.pass_index,
    )

captured = {}
for engine in ("CYCLES", "BLENDER_WORKBENCH"):
    scene.render.engine = engine
    before = settings()
    cap = capture.capture_camera(scene, Path(OUT) / engine, width=32, height=24)
    assert settings() == before, f"capture left the scene changed: {before} -> {settings()}"
    assert cap.render_engine == engine and cap.passes_engine == "CYCLES", cap
    assert 0 < cap.near < cap.far, (cap.near, cap.far)
    captured[engine] = {"color": str(cap.color_path), "passes": str(cap.passes_path)}
    depth = capture.read_pass(cap.passes_path, "Depth")  # Blender's own OpenImageIO
    ids = capture.read_pass(cap.passes_path, "Object Index")
    assert depth.shape == (24, 32) and 5.0 < depth[12, 16] < 15.0, depth[12, 16]
    assert ids[12, 16] == 1.0, ids[12, 16]
print("CAPTURE " + json.dumps(captured))
"""


def check_capture(stdout: str) -> None:
    """The files CAPTURE reported: a 32x24 PNG and a multilayer EXR with the passes
    for each engine (4.5 writes one part with every channel, 5.0 one part per pass)."""
    line = next(x for x in stdout.splitlines() if x.startswith("CAPTURE "))
    captured = json.loads(line[len("CAPTURE ") :])
    assert sorted(captured) == ["BLENDER_WORKBENCH", "CYCLES"], captured
    for engine, paths in captured.items():
        color = Path(paths["color"]).read_bytes()
        assert color[:8] == b"\x89PNG\r\n\x1a\n", (engine, color[:8])
        size = struct.unpack(">II", color[16:24])
        assert size == (32, 24), (engine, size)
        passes = read_passes(Path(paths["passes"]))  # 4.5: one part, "IndexOB"
        assert set(passes.present()) >= {"combined", "depth", "normal", "vector", "object_index"}
        assert passes.depth is not None and passes.object_index is not None
        assert passes.depth.shape == (24, 32), (engine, passes.depth.shape)
        # The default camera sees the default cube about 10 units away, the corners empty.
        assert 5.0 < float(passes.depth[12, 16]) < 15.0, (engine, passes.depth[12, 16])
        assert math.isinf(passes.depth[0, 0]), (engine, passes.depth[0, 0])
        assert object_ids(passes) == [1], f"{engine}: ids {object_ids(passes)}"


def scene_script(path: Path) -> str:
    """A scene script for `run_in_blender`, with tests/blender on its sys.path so it can
    import the shared `prologue` (installing the add-on, the animated test scene)."""
    return f"import sys\nsys.path.insert(0, {str(path.parent)!r})\n" + path.read_text()


def run_in_blender(
    tmp_path: Path,
    zip_path: Path,
    body: str,
    extra_env: dict[str, str] | None = None,
    timeout: float = 240,
    python: str | Path = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """Runs BLOCKER + `body` in a fresh Python with the bpy wheel (`python`: this venv's
    5.0 by default) and a throwaway Blender user (`ZIP` names the add-on zip); shared by the
    other Blender test files."""
    env = build_addon.sandbox_env(tmp_path / "blender-user", tmp_path / "home", extra_env)
    script = tmp_path / "install_addon.py"
    script.write_text(BLOCKER + f"ZIP = {str(zip_path)!r}\n" + body)
    # cwd outside the checkout so the repository is not on sys.path by accident.
    return subprocess.run(
        [str(python), str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.process
def test_zip_installs_and_registers_without_model_libraries(
    addon_zip: Path, tmp_path: Path
) -> None:
    body = f"OUT = {str(tmp_path / 'capture')!r}\n" + INSTALL + CAPTURE
    out = run_in_blender(tmp_path, addon_zip, body)
    log = out.stdout[-4000:] + out.stderr[-4000:]
    assert out.returncode == 0 and "GENART-ADDON-OK" in out.stdout, log
    check_capture(out.stdout)  # a capture ran with torch, diffusers and genart_core refused
    installed = tmp_path / "blender-user" / "extensions" / "user_default" / "genart"
    assert (installed / "_vendor" / "genart_protocol" / "client.py").is_file()
    assert not (tmp_path / "home" / ".config" / "blender").exists()


@pytest.mark.process
def test_install_check_fails_when_the_addon_imports_a_blocked_module(
    addon_zip: Path, tmp_path: Path
) -> None:
    """The install test above can fail: the same check on a zip whose add-on imports
    genart_core.engines does."""
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(addon_zip) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "ui/panel.py":
                data += b"\nimport genart_core.engines\n"
            dst.writestr(item, data)
    out = run_in_blender(tmp_path, bad, INSTALL)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "GENART-ADDON-OK" not in out.stdout, log
    assert "blocked in this test: genart_core" in log, log


def test_effective_settings_preferences_alone() -> None:
    prefs = {"mode": "CONNECT", "connection_file": "/c.json", "address": "", "launch_command": ""}
    eff = settings.effective_settings(prefs, {})
    assert (eff.mode, eff.connection_file, eff.address, eff.overridden_by) == (
        "CONNECT",
        "/c.json",
        "",
        (),
    )
    assert eff.launch_command == ("genart-sidecar",)
    eff = settings.effective_settings({"launch_command": "/venv/bin/python"}, {})
    assert (eff.mode, eff.launch_command) == ("LAUNCH", ("/venv/bin/python", "-m", "sidecar"))
    with pytest.raises(ValueError):
        settings.effective_settings({"mode": "BOTH"}, {})


def test_environment_overrides_win_over_preferences() -> None:
    prefs = {
        "mode": "LAUNCH",
        "launch_command": "/venv/bin/python",
        "connection_file": "/prefs.json",
        "address": "",
    }
    eff = settings.effective_settings(prefs, {"GENART_CONNECTION_FILE": "/env.json"})
    assert (eff.mode, eff.connection_file) == ("CONNECT", "/env.json")
    assert eff.overridden_by == ("GENART_CONNECTION_FILE",)

    eff = settings.effective_settings(prefs, {"GENART_SIDECAR": "gpu-box:7777"})
    assert (eff.mode, eff.address, eff.overridden_by) == (
        "CONNECT",
        "gpu-box:7777",
        ("GENART_SIDECAR",),
    )
    eff = settings.effective_settings(prefs, {"GENART_SIDECAR": "tcp:[::1]:5000"})
    assert (eff.mode, eff.address) == ("CONNECT", "[::1]:5000")

    connect = {**prefs, "mode": "CONNECT", "address": "127.0.0.1:9"}
    eff = settings.effective_settings(connect, {"GENART_SIDECAR": "/opt/sc/bin/genart-sidecar --x"})
    assert (eff.mode, eff.launch_command) == ("LAUNCH", ("/opt/sc/bin/genart-sidecar", "--x"))

    both = {"GENART_SIDECAR": "/py/python3.11", "GENART_CONNECTION_FILE": "/shared/c.json"}
    eff = settings.effective_settings(prefs, both)
    assert eff.mode == "LAUNCH" and eff.launch_command == ("/py/python3.11", "-m", "sidecar")
    assert eff.connection_file == "/shared/c.json"
    assert set(eff.overridden_by) == set(both)

    eff = settings.effective_settings(prefs, {"GENART_SIDECAR": "  ", "GENART_CONNECTION_FILE": ""})
    assert (eff.mode, eff.connection_file, eff.overridden_by) == ("LAUNCH", "/prefs.json", ())


def test_state_folder_and_model_folders_with_their_overrides() -> None:
    prefs = {"state_dir": "/fast/genart", "models": "/models/a; /models/b ;"}
    eff = settings.effective_settings(prefs, {})
    assert (eff.state_dir, eff.models, eff.overridden_by) == (
        "/fast/genart",
        ("/models/a", "/models/b"),
        (),
    )
    assert settings.effective_settings({}, {}).state_dir == ""  # the platform default
    farm = {"GENART_STATE_DIR": "/local/ssd/genart", "GENART_MODELS": "/nfs/models"}
    eff = settings.effective_settings(prefs, farm)
    assert eff.state_dir == "/local/ssd/genart"
    assert eff.models == ()  # the sidecar reads GENART_MODELS itself; preferences step aside
    assert set(eff.overridden_by) == set(farm)


def test_address_parsing() -> None:
    assert settings.parse_address("localhost:8080") == ("localhost", 8080)
    assert settings.parse_address("[::1]:1") == ("::1", 1)
    for bad in ("C:\\venv\\python.exe", "host", "host:0", "host:70000", "a b:1"):
        assert not settings.is_address(bad), bad


def vendored_files(zip_path: Path) -> dict[str, bytes]:
    prefix = build_addon.VENDORED_PROTOCOL + "/"
    with zipfile.ZipFile(zip_path) as zf:
        return {
            n[len(prefix) :]: zf.read(n)
            for n in zf.namelist()
            if n.startswith(prefix) and not n.endswith("/")
        }


def protocol_files() -> dict[str, bytes]:
    return {
        p.relative_to(PROTOCOL).as_posix(): p.read_bytes()
        for p in sorted(PROTOCOL.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_vendored_protocol_is_identical(addon_zip: Path) -> None:
    source, vendored = protocol_files(), vendored_files(addon_zip)
    assert "client.py" in source and "__init__.py" in source
    assert sorted(vendored) == sorted(source)
    differ = [name for name in source if vendored[name] != source[name]]
    assert differ == [], f"vendored copies differ from genart_core/protocol: {differ}"
    # A --dev copy in the checkout, if there is one, must not have drifted either.
    dev = ROOT / "blender_addon" / build_addon.VENDORED_PROTOCOL
    if dev.exists():
        dev_files = {
            p.relative_to(dev).as_posix(): p.read_bytes()
            for p in dev.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        }
        assert dev_files == source, "stale blender_addon/_vendor: run dev/build_addon.py --dev"


def test_zip_has_manifest_at_its_root_and_no_caches(addon_zip: Path) -> None:
    with zipfile.ZipFile(addon_zip) as zf:
        names = zf.namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
