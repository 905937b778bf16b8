"""Engines in the UI, inside the `bpy` wheel against a real sidecar: the engines offered per
task are exactly the welcome's, a third-party engine (texsynth, installed from
examples/genart-texsynth) gets its parameters from its schema, the bridge's output is what
the sidecar accepts and a bad value names its field, capabilities an engine lacks are shown
as such, values survive unregister/re-register and a schema change.

Each test runs one fresh Python with the wheel: it installs the built zip, connects to the
module's sidecar through the Check sidecar operator and prints what pytest checks further
(the request, validated here with genart_core's own schema code)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarProcess
from test_blender_addon import build_addon, run_in_blender

from genart_core.engines.schema import validate_params

pytestmark = [pytest.mark.blender, pytest.mark.process]


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_addon.build(tmp_path_factory.mktemp("addon"))


def ready_welcome(sc: SidecarProcess, timeout: float = 30.0) -> dict[str, Any]:
    """The sidecar's welcome once its engines are known (a new hello until then)."""
    deadline = time.monotonic() + timeout
    while True:
        client = sc.connect()
        welcome = client.welcome
        client.close()
        if welcome.get("engines_ready") or time.monotonic() > deadline:
            assert welcome.get("engines_ready"), welcome
            return welcome
        time.sleep(0.2)


@pytest.fixture(scope="module")
def welcome_file(sidecar: SidecarProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("welcome") / "welcome.json"
    path.write_text(json.dumps(ready_welcome(sidecar)))
    return path


# Installs the zip, connects to the sidecar with the Check sidecar operator and syncs.
PRELUDE = """
import copy
import importlib
import json
import os
import bpy

MOD = "bl_ext.user_default.genart"
assert bpy.ops.extensions.package_install_files(
    repo="user_default", filepath=ZIP, enable_on_install=True
) == {"FINISHED"}
addon = importlib.import_module(MOD)
P, B = addon.properties, addon.bridge
InvalidParams = addon._vendor.genart_protocol.errors.InvalidParams
EXPECTED = json.load(open(WELCOME_FILE))["engines"]
BY_NAME = {e["name"]: e for e in EXPECTED}
os.environ["GENART_CONNECTION_FILE"] = CONNECTION_FILE

def connect():
    assert bpy.ops.genart.check_sidecar() == {"FINISHED"}
    welcome = addon.runtime.session().welcome
    assert welcome["engines"] == EXPECTED, "another schema than the sidecar's own welcome"
    return welcome

def param_of(welcome, engine, name):
    spec = next(e for e in welcome["engines"] if e["name"] == engine)
    return next(p for p in spec["params"] if p["name"] == name)

def refused(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except InvalidParams as exc:
        return exc
    raise AssertionError(f"no InvalidParams from {fn.__name__}{args}")

live = connect()
# Check sidecar builds the groups itself (scripts set values right after it).
assert P.current() is not None, "Check sidecar did not build the engine groups"
assert P.sync_engines() is False, "a sync with the same schema must be a no-op"
scene = bpy.context.scene
settings = scene.genart
"""

EPILOGUE = """
bpy.ops.preferences.addon_disable(module=MOD)
assert not hasattr(bpy.types.Scene, "genart") and P.current() is None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not heavy and not refused_imports, (heavy, refused_imports)
print("GENART-ENGINES-UI-OK")
"""


def run(addon_zip: Path, tmp_path: Path, sc: SidecarProcess, welcome: Path, body: str) -> str:
    head = (
        f"CONNECTION_FILE = {str(sc.connection_file)!r}\n"
        f"WELCOME_FILE = {str(welcome)!r}\n"
        "refused_imports = refused\n"
    )
    out = run_in_blender(tmp_path, addon_zip, head + PRELUDE + body + EPILOGUE, timeout=180)
    log = out.stdout[-6000:] + out.stderr[-6000:]
    assert out.returncode == 0 and "GENART-ENGINES-UI-OK" in out.stdout, log
    return out.stdout


OFFERED = """
for task in P.TASKS:
    want = [e["name"] for e in EXPECTED if task in e["tasks"]]
    assert [item[0] for item in P.engine_items(task)] == want, (task, P.engine_items(task))
    default = "sd" if "sd" in want else want[0]  # sd where offered, else the first
    assert P.offered(task) == want and P.chosen_engine(settings, task) == default, task
    assert getattr(settings, f"{task}_engine") == default
    for name in want:  # the selector takes exactly these, and keeps the choice by name
        setattr(settings, f"{task}_engine", name)
        assert getattr(settings, f"{task}_engine") == name == P.chosen_engine(settings, task)
        assert getattr(settings, f"{task}_engine_name") == name
    for name in sorted(set(BY_NAME) - set(want)):
        try:
            setattr(settings, f"{task}_engine", name)
        except TypeError:
            continue
        raise AssertionError(f"{name} offered for {task}")
# Independent of the welcome: what the engines in this checkout advertise.
assert {"fake", "sd", "texsynth"} <= set(P.offered("txt2img"))
assert "texsynth" in P.offered("img2img") and P.offered("control") == ["sd"]
assert not any("download" in P.offered(t) for t in P.TASKS)

# texsynth, a third-party engine: its parameters from its schema, types, ranges, defaults, help.
tex = settings.engines.texsynth
rna = tex.bl_rna.properties
for p in BY_NAME["texsynth"]["params"]:
    name, kind = p["name"], p["type"]
    if name in P.ADDON_FILLED:
        assert name not in rna.keys(), f"{name} is filled by the add-on, not drawn"
        continue
    r = rna[name]
    assert r.description.startswith(p["help"]), (name, r.description)
    if kind == "int":
        got = (r.type, r.default, r.hard_min, r.hard_max)
        assert got == ("INT", p["default"], p["min"], p["max"]), (name, got)
        assert getattr(tex, name) == p["default"]
    elif kind == "float":
        assert r.type == "FLOAT" and abs(r.default - p["default"]) < 1e-6, name
        assert abs(r.hard_min - p["min"]) < 1e-6 and abs(r.hard_max - p["max"]) < 1e-6, name
    elif kind == "bool":
        assert (r.type, r.default) == ("BOOLEAN", p["default"]), name
    elif kind == "enum":
        assert r.type == "ENUM" and r.default == p["default"], name
        assert [i.identifier for i in r.enum_items] == p["choices"], name
    elif kind == "int_list":
        assert r.type == "STRING" and "separated by commas" in r.description, name
        spec = P.engine_spec("texsynth").param(name)
        assert B.parse_list(spec, getattr(tex, name)) == p["default"], name
    else:
        raise AssertionError(f"texsynth has a {kind} parameter this test does not know: {name}")
drawn = [p.name for p in P.engine_spec("texsynth").drawn_params()]
assert drawn[:3] == ["seed", "noise", "scale"] and "width" not in drawn, drawn
# The same facts, written out: octaves 1..12 default 5, persistence 0..1 default 0.5.
assert (tex.octaves, rna["octaves"].hard_min, rna["octaves"].hard_max) == (5, 1, 12)
assert abs(tex.persistence - 0.5) < 1e-6 and rna["persistence"].hard_max == 1.0
assert tex.noise == "perlin" and tex.color_a == "24, 28, 48" and tex.turbulence is False
assert rna["noise"].description == "txt2img: noise basis (gradient or value noise)"
# sd's seed goes to 2**32 - 1; Blender's ints stop at 2**31 - 1.
assert settings.engines.sd.bl_rna.properties["seed"].hard_max == 2**31 - 1
# Small floats get more digits (vqgan_clip's learning rate goes down to 0.001).
assert settings.engines.vqgan_clip.bl_rna.properties["lr"].precision == 4
assert rna["persistence"].precision == 3
assert bpy.types.VIEW3D_PT_genart_engines.bl_parent_id == "VIEW3D_PT_genart"
"""


def test_engines_offered_per_task_and_a_third_party_engines_parameters(
    addon_zip: Path, tmp_path: Path, sidecar: SidecarProcess, welcome_file: Path
) -> None:
    run(addon_zip, tmp_path, sidecar, welcome_file, OFFERED)


BRIDGE = """
settings.txt2img_engine = "texsynth"
tex = settings.engines.texsynth
tex.persistence = 0.3  # float32 in Blender: the request must say 0.3, not 0.30000001
tex.color_a = " 10,20 ,30 "
tex.palette = "two_color"
filled = {"width": 64, "height": 48, "tileable": True, "near": 1.0}
req = B.build_request(scene, "txt2img", filled=filled)
assert (req.engine, req.task, req.dropped) == ("texsynth", "txt2img", ("near",)), req
params = dict(req.params)
assert params["persistence"] == 0.3 and params["color_a"] == (10, 20, 30), params
got = (params["width"], params["height"], params["tileable"], params["octaves"])
assert got == (64, 48, True, 5), got
assert set(params) == {p["name"] for p in BY_NAME["texsynth"]["params"]}
try:
    req.params["octaves"] = 6
except TypeError:
    pass
else:
    raise AssertionError("the request's params can be changed")
print("REQUEST " + json.dumps(req.submit_params()))
# The sidecar itself accepts it (it validates before queueing).
client = addon.runtime.session().client
job = client.request("submit", req.submit_params()).result(10).result
assert job["job"], job

# Out-of-range and malformed values name their field and what is allowed.
tex.color_a = "10, 300, 30"
exc = refused(B.build_request, scene, "txt2img")
assert exc.field == "params.color_a" and exc.allowed == {"min": 0, "max": 255}, exc
assert "params.color_a must be in [0, 255], not 300" in str(exc), str(exc)
assert B.field_error(tex, P.engine_spec("texsynth").param("color_a")) == exc.message
tex.color_a = "10, x, 30"
exc = refused(B.build_request, scene, "txt2img")
assert exc.field == "params.color_a" and "'x'" in exc.message, exc
tex.color_a = "24, 28, 48"
exc = refused(B.build_request, scene, "txt2img", filled={"width": 0})
assert exc.field == "params.width" and exc.allowed == {"min": 1, "max": 4096}, exc
exc = refused(B.build_request, scene, "txt2img", filled={"tileable": "yes"})
assert exc.field == "params.tileable" and "true or false" in exc.message, exc
exc = refused(B.build_request, scene, "download")
assert exc.field == "task" and exc.allowed == list(P.TASKS), exc
exc = refused(B.build_request, scene, "txt2img", welcome={"engines": [], "engines_ready": False})
assert exc.field == "engine" and "not ready" in exc.message, exc

# A value kept from a wider schema that the sidecar's schema no longer allows is refused,
# not clamped: octaves 18 under a schema allowing 1..20, then the real one (1..12).
wider = copy.deepcopy(live)
param_of(wider, "texsynth", "octaves")["max"] = 20
assert P.sync_engines(wider) is True
tex = settings.engines.texsynth
tex.octaves = 18
assert dict(B.build_request(scene, "txt2img", welcome=wider).params)["octaves"] == 18
exc = refused(B.build_request, scene, "txt2img", welcome=live)
assert exc.field == "params.octaves" and exc.allowed == {"min": 1, "max": 12}, exc
assert "params.octaves must be in [1, 12], not 18" in exc.message, exc.message
tex = settings.engines.texsynth
tex.octaves = 12
assert dict(B.build_request(scene, "txt2img").params)["octaves"] == 12

# A third engine through the same bridge: fake's int list and enum.
settings.img2img_engine = "fake"
settings.engines.fake.fault_frames = "1 2, 3"
settings.engines.fake.mode = "fail"
req = B.build_request(scene, "img2img")
assert req.engine == "fake" and dict(req.params)["fault_frames"] == (1, 2, 3)
assert dict(req.params)["mode"] == "fail"
print("REQUEST " + json.dumps(req.submit_params()))
"""


def test_bridge_output_validates_and_bad_values_name_their_field(
    addon_zip: Path, tmp_path: Path, sidecar: SidecarProcess, welcome_file: Path
) -> None:
    stdout = run(addon_zip, tmp_path, sidecar, welcome_file, BRIDGE)
    requests = [json.loads(ln[8:]) for ln in stdout.splitlines() if ln.startswith("REQUEST ")]
    assert [r["engine"] for r in requests] == ["texsynth", "fake"], stdout[-2000:]
    engines = {e["name"]: e for e in json.loads(welcome_file.read_text())["engines"]}
    for req in requests:
        schema = engines[req["engine"]]["params"]
        assert validate_params(schema, req["params"]) == req["params"], req


CAPABILITIES = """
sd, tex = settings.engines.sd, settings.engines.texsynth
def caps(name, group):
    return {c.key: c for c in B.capabilities(P.engine_spec(name), group)}

# No model set: the embedded model's own depth ControlNet; a model without a ControlNet
# has no depth control.
c = caps("sd", sd)["depth_control"]
assert (c.available, c.text) == (True, "Depth control: no model set: the default's"), c
sd.model = "~/models/sd15.safetensors"
c = caps("sd", sd)["depth_control"]
assert (c.available, c.text) == (False, "Depth control: needs depth_controlnet"), c
assert caps("sd", sd)["normal_control"].text == "Normal control: needs normal_controlnet"
sd.depth_controlnet = "lllyasviel/control_v11f1p_sd15_depth"
c = caps("sd", sd)["depth_control"]
assert (c.available, c.text) == (True, "Depth control: with depth_controlnet"), c
sd.model = ""
assert caps("sd", sd)["panorama"].available and caps("sd", sd)["lora"].text == "LoRAs"

t = caps("texsynth", tex)
got = (t["depth_control"].available, t["depth_control"].text)
assert got == (False, "Depth control: not supported"), got
assert (t["panorama"].available, t["panorama"].text) == (False, "Panorama: not advertised")
assert t["tileable"].available and t["tileable"].text == "Tileable"
v = caps("vqgan_clip", settings.engines.vqgan_clip)["depth_control"]
assert v.available and v.text == "Depth control: as a per-pixel loss weight (img2img)", v
f = caps("fake", settings.engines.fake)
assert not f["tileable"].available and not f["depth_control"].available

# Nothing an engine advertises is dropped, and the actions' four are always there.
for e in EXPECTED:
    keys = [c.key for c in B.capabilities(P.engine_spec(e["name"]), None)]
    assert set(e["capabilities"]) <= set(keys), (e["name"], keys)
    assert keys[:4] == list(B.ACTION_CAPABILITIES), keys
"""


def test_capabilities_an_engine_lacks_are_shown_as_such(
    addon_zip: Path, tmp_path: Path, sidecar: SidecarProcess, welcome_file: Path
) -> None:
    run(addon_zip, tmp_path, sidecar, welcome_file, CAPABILITIES)


LIFECYCLE = """
def values():
    s = bpy.context.scene.genart
    e = s.engines
    return (
        P.chosen_engine(s, "txt2img"), P.chosen_engine(s, "img2img"), e.texsynth.octaves,
        e.texsynth.noise, e.sd.prompt, e.sd.scheduler, e.fake.mode, e.sd.lora_weights,
    )

settings.txt2img_engine = "texsynth"
settings.img2img_engine = "fake"
e = settings.engines
e.texsynth.octaves, e.texsynth.noise = 7, "value"
e.sd.prompt, e.sd.scheduler, e.sd.lora_weights = "a brick wall", "euler", "0.5, 1"
e.fake.mode = "crash"
kept = values()
assert kept == ("texsynth", "fake", 7, "value", "a brick wall", "euler", "crash", "0.5, 1"), kept
classes = P.current().classes
assert len(classes) == len(EXPECTED) and all(c.is_registered for c in classes)

for cycle in range(2):
    addon.unregister()
    assert not hasattr(bpy.types.Scene, "genart") and P.current() is None
    assert not any(c.is_registered for c in classes), [c for c in classes if c.is_registered]
    assert not P.GENART_PG_settings.is_registered and not P.GENART_PG_engines.is_registered
    assert not bpy.app.timers.is_registered(P._sync_tick) and addon.runtime.RUNTIME.session is None
    assert not hasattr(bpy.types, "VIEW3D_PT_genart_engines")
    addon.register()
    assert bpy.app.timers.is_registered(P._sync_tick) and P.current() is None
    assert P.offered("txt2img") == []
    assert P.chosen_engine(bpy.context.scene.genart, "txt2img") is None
    connect()  # Check sidecar builds the groups again after a re-register
    if cycle == 0:
        P._sync_tick()  # what Blender's timer calls: nothing left to do
    else:
        assert P.sync_engines() is False
    assert P.current() is not None and values() == kept, (cycle, values())
    classes = P.current().classes

# A sidecar with another schema: fake gone, octaves now a float, sd's choices reordered.
other = copy.deepcopy(live)
other["engines"] = [e for e in other["engines"] if e["name"] != "fake"]
param_of(other, "texsynth", "octaves").update(type="float", default=3.5)
sched = param_of(other, "sd", "scheduler")
sched["choices"] = list(reversed(sched["choices"]))
assert P.sync_engines(other) is True
s = bpy.context.scene.genart
assert "fake" not in P.offered("txt2img") and not hasattr(s.engines, "fake")
assert P.chosen_engine(s, "img2img") == "sd" and s.img2img_engine == "sd"
assert not any(c.is_registered for c in classes if c.__name__ == "GENART_PG_engine_fake")
assert s.engines.texsynth.octaves == 3.5, "a value of another type must give way to the default"
assert s.engines.texsynth.noise == "value" and s.engines.sd.scheduler == "euler"
assert s.img2img_engine_name == "fake", "the user's choice is kept for when fake comes back"

# Names that are no Python identifiers, or that Blender already uses, get stable mangled
# identifiers; a type the add-on cannot draw is refused by the bridge, naming the field.
acme = {
    "name": "acme-noise", "version": "2", "tasks": ["txt2img"], "help": "", "inputs": {},
    "capabilities": {"panorama": "with wrap x"},
    "params": [
        {"name": "name", "type": "int", "default": 3, "min": 0, "max": 9, "help": "a"},
        {"name": "cfg scale", "type": "float", "default": 2.5, "help": "b"},
        {"name": "for", "type": "enum", "default": "y", "choices": ["x", "y"], "help": "c"},
        {"name": "grid", "type": "matrix", "default": None, "help": "d"},
    ],
}
other["engines"].append(acme)
assert P.sync_engines(other) is True and "acme-noise" in P.offered("txt2img")
ids = [P.prop_id(n) for n in ("acme-noise", "name", "cfg scale", "for")]
assert all(i.startswith("p_") and i.isidentifier() for i in ids), ids
assert ids == [P.prop_id(n) for n in ("acme-noise", "name", "cfg scale", "for")]
group = getattr(s.engines, ids[0])
assert (getattr(group, ids[1]), getattr(group, ids[2]), getattr(group, ids[3])) == (3, 2.5, "y")
assert not hasattr(group, P.prop_id("grid"))
assert group.bl_rna.properties[ids[2]].name == "Cfg Scale"
s.txt2img_engine = "acme-noise"
exc = refused(B.build_request, bpy.context.scene, "txt2img", welcome=other)
assert exc.field == "params.grid" and "cannot set" in exc.message, exc
caps = {c.key: c for c in B.capabilities(P.engine_spec("acme-noise"), group)}
assert caps["panorama"].text == "Panorama: with wrap x" and caps["panorama"].available
s.txt2img_engine = "texsynth"

# Back to the sidecar's own schema: everything that still matches is as the user left it.
assert P.sync_engines(live) is True
assert values()[:2] == ("texsynth", "fake") and values()[3:] == kept[3:], values()
"""


def test_unregister_register_twice_and_a_schema_change_keep_values(
    addon_zip: Path, tmp_path: Path, sidecar: SidecarProcess, welcome_file: Path
) -> None:
    run(addon_zip, tmp_path, sidecar, welcome_file, LIFECYCLE)
