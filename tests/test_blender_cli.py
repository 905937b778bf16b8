"""The `genart` Blender command (`blender -b scene.blend --command genart ...`) in the `bpy`
wheel, against a real sidecar with tiny Stable Diffusion models and the texsynth engine.

The wheel has no `--command` argv (DESIGN §4), so the tests call the handler the extension
registers with an argv list: many cases in one Python (tests/blender/cli_scenes.py), and a
few as whole processes whose exit status is the handler's return value, as Blender's is
(tests/blender/cli_command.py).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SidecarProcess
from sdtiny import build_tiny_controlnet, build_tiny_sd
from test_blender_addon import build_addon, run_in_blender

pytestmark = [pytest.mark.blender, pytest.mark.process]

HERE = Path(__file__).parent / "blender"
ERROR = "genart: error: "


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("cli").resolve()
    models = tmp / "models"
    sd = build_tiny_sd(models)  # models/sd (and models/_tok, which is no model)
    cn = build_tiny_controlnet(sd, models / "cn")
    # Its own (empty) Hugging Face cache: `check` hashes every model the sidecar lists.
    sc = SidecarProcess(
        tmp / "state", extra=["--models", str(models)], env={"HF_HUB_CACHE": str(tmp / "hf")}
    ).start()
    try:
        yield {"tmp": tmp, "sd": sd, "cn": cn, "sidecar": sc, "zip": build_addon.build(tmp / "z")}
    finally:
        sc.stop()


@pytest.fixture(scope="module")
def run(world: dict[str, Any]) -> dict[str, Any]:
    tmp = world["tmp"]
    out = tmp / "out"
    out.mkdir()
    body = (
        f"OUT = {str(out)!r}\nSD = {str(world['sd'])!r}\nCN = {str(world['cn'])!r}\n"
        f"CONN = {str(world['sidecar'].connection_file)!r}\n"
        f"MISSING = {str(tmp / 'missing' / 'connection.json')!r}\n"
        + (HERE / "cli_scenes.py").read_text()
    )
    t0 = time.monotonic()
    proc = run_in_blender(tmp, world["zip"], body, timeout=400)
    log = proc.stdout[-8000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and "GENART-CLI-OK" in proc.stdout, log
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    results["_seconds"] = time.monotonic() - t0
    results["_blend"] = out / "scene.blend"
    return results


def one_error(case: dict[str, Any]) -> str:
    """The case's one error line (asserting there is exactly one and no traceback)."""
    lines = [x for x in case["err"].splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR), case
    assert "Traceback" not in case["out"] + case["err"], case
    return lines[0]


def test_the_extension_registers_the_command(run: dict[str, Any]) -> None:
    assert run["registered"] is True
    assert run["registered_when_disabled"] is False and run["registered_again"] is True


def test_help_and_bad_usage(run: dict[str, Any]) -> None:
    assert run["help"]["rc"] == 0 and "usage: genart" in run["help"]["out"]
    for sub in ("check", "texture", "tileable", "background", "stylize"):
        assert sub in run["help"]["out"], run["help"]["out"]
    assert run["check_help"]["rc"] == 0 and "--no-hash" in run["check_help"]["out"]
    for name, expected in (
        ("no_subcommand", "required: SUBCOMMAND"),
        ("unknown_subcommand", "frobnicate"),
        ("bad_flag", "--bogus"),
        ("bad_int", "--seed"),
        ("bad_param_syntax", "KEY=VALUE"),
    ):
        case = run[name]
        assert case["rc"] == 2, case
        assert expected in one_error(case), case


def test_an_unreachable_sidecar_fails_quickly_with_one_line(run: dict[str, Any]) -> None:
    for name, expected in (
        ("unreachable", "not reachable"),
        ("cannot_launch", "cannot run"),
        ("no_token", "token"),
    ):
        case = run[name]
        assert case["rc"] == 1, case
        line = one_error(case)
        assert expected in line and "--sidecar" in line, line
        assert case["seconds"] < 10, case


def test_engine_and_parameter_mistakes_name_what_to_fix(run: dict[str, Any]) -> None:
    line = one_error(run["bad_engine"])
    assert run["bad_engine"]["rc"] == 2 and "--engine nope" in line and "texsynth" in line, line
    line = one_error(run["bad_value"])
    assert run["bad_value"]["rc"] == 2 and "params.octaves must be in [1" in line, line
    line = one_error(run["unknown_param"])
    assert "--model" in line and "texsynth has no parameter 'model'" in line, line
    line = one_error(run["bad_objects"])
    assert run["bad_objects"]["rc"] == 2 and "'Nope'" in line, line


def test_tileable_with_texsynth_makes_a_material_and_saves(run: dict[str, Any]) -> None:
    case = run["tileable"]
    assert case["rc"] == 0 and case["err"] == "", case
    assert any("tileable" in (m or "") for m in case["slots"]), case["slots"]
    assert not any("tileable" in (m or "") for m in case["ground_slots"]), case  # --objects
    assert case["saved"] is True
    assert any("tileable" in m for m in case["saved_materials"]), case["saved_materials"]
    # The flags went into the scene, typed by the schema, as the panel would set them.
    assert case["octaves"] == 3 and case["color_a"] == "200, 40, 40"
    assert case["txt2img_engine"] == "texsynth"
    assert case["selected"] == ["Ground"] and case["active"] == "Ball"  # restored
    assert "genart: tileable texture: done" in case["out"], case["out"]


def test_background_world(run: dict[str, Any]) -> None:
    case = run["background"]
    assert case["rc"] == 0, case
    assert len(case["worlds"]) == len(case["worlds_before"]) + 1, case


def test_texture_with_tiny_sd_and_controlnet(run: dict[str, Any], world: dict[str, Any]) -> None:
    case = run["texture"]
    assert case["rc"] == 0 and case["err"] == "", case
    assert case["images"], case
    recipe = case["recipe"]
    assert recipe["engine"] == "sd" and recipe["params"]["seed"] == 7
    assert recipe["params"]["prompt"] == "red brick wall" and recipe["params"]["steps"] == 2
    # A relative --model reaches the sidecar absolute.
    assert case["relative_sd"].startswith("./")
    assert recipe["model"] == str(world["sd"]) and recipe["params"]["model"] == str(world["sd"])
    assert recipe["params"]["depth_controlnet"] == str(world["cn"])
    assert all("genart projection" in uvs for uvs in case["uv"].values()), case["uv"]
    lines = [x for x in case["out"].splitlines() if x.startswith("genart: texture from camera:")]
    # Progress lines are printed at most once a second: which steps show depends on speed.
    assert any(re.search(r"(running|step \d/2)", x) for x in lines), lines
    assert any("done" in x for x in lines), lines


def test_check_passes_when_the_scenes_models_are_present(
    run: dict[str, Any], world: dict[str, Any]
) -> None:
    case = run["check_ok"]
    assert case["rc"] == 0 and case["err"] == "", case
    out = case["out"]
    assert "check: extension genart" in out and "enabled" in out, out
    assert "Sidecar ready" in out, out
    assert f"sd.model = {world['sd']}: present (sd1 base, sha256 " in out, out
    assert f"sd.depth_controlnet = {world['cn']}: present" in out, out
    assert out.rstrip().endswith("genart: check: ok"), out
    restricted = run["check_txt2img"]
    assert restricted["rc"] == 0 and "name no models" in restricted["out"], restricted


def test_check_fails_naming_what_is_missing_or_different(run: dict[str, Any]) -> None:
    case = run["check_missing"]
    line = one_error(case)
    assert case["rc"] == 1 and case["path"] in line and "not among the sidecar's models" in line
    case = run["check_relative"]
    line = one_error(case)
    assert case["rc"] == 1 and "//models/sd is not an absolute path" in line, line
    case = run["check_other_model"]
    line = one_error(case)
    assert case["rc"] == 1 and "sha256" in line and "000000000000" in line, line
    case = run["check_same_model"]
    assert case["rc"] == 0 and "as in the scene's images" in case["out"], case
    case = run["check_no_engine"]
    line = one_error(case)
    assert case["rc"] == 1 and "engine nosuch for txt2img, not on this sidecar" in line, line


def test_stylize_runs_the_operator_or_says_it_is_missing(run: dict[str, Any]) -> None:
    case = run["stylize_bad_engine"]
    line = one_error(case)
    if not run["stylize_available"]:
        assert case["rc"] == 1 and "no Stylize animation operator" in line, line
        return
    assert case["rc"] == 2 and "--engine nope" in line, line
    case = run["stylize"]
    assert case["rc"] == 0 and case["err"] == "", case
    assert "genart: stylize animation: done" in case["out"], case["out"]
    assert len(case["frames"]) == 2, case["frames"]  # --output reached the operator
    assert case["coherence"] == ["off"]  # and --coherence


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["check", "--sidecar", "{conn}"], 0, "genart: check: ok"),
        (["check", "--sidecar", "{missing}"], 1, "not reachable"),
        (["tileable", "--bogus"], 2, "unrecognized arguments: --bogus"),
    ],
    ids=["check-ok", "unreachable", "bad-flag"],
)
def test_as_a_process_the_exit_status_is_the_commands(
    run: dict[str, Any],
    world: dict[str, Any],
    tmp_path: Path,
    argv: list[str],
    code: int,
    expected: str,
) -> None:
    names = {"conn": str(world["sidecar"].connection_file), "missing": str(tmp_path / "x.json")}
    argv = [a.format(**names) for a in argv]
    body = (
        f"BLEND = {str(run['_blend'])!r}\nARGV = {argv!r}\n" + (HERE / "cli_command.py").read_text()
    )
    t0 = time.monotonic()
    proc = run_in_blender(tmp_path, world["zip"], body, timeout=120)
    seconds = time.monotonic() - t0
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("genart:")]
    if code == 0:
        assert errors == [] and expected in proc.stdout, proc.stdout[-3000:]
    else:
        assert len(errors) == 1 and errors[0].startswith(ERROR) and expected in errors[0], errors
        assert seconds < 30, seconds


def test_a_worker_launches_its_own_sidecar_for_the_check_and_it_exits_with_blender(
    run: dict[str, Any], world: dict[str, Any], tmp_path: Path
) -> None:
    """One sidecar per farm worker: `--sidecar COMMAND` launches it on GENART_STATE_DIR with
    GENART_MODELS. Its engine worker is made slow to start here (a sitecustomize that sleeps
    in the worker only), so the welcome comes before the engines: the session waits for them
    and says hello again."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\nif '--server-pid' in sys.argv:\n    time.sleep(4)\n"
    )
    state = tmp_path / "worker-state"
    env = {
        "GENART_STATE_DIR": str(state),
        "GENART_MODELS": str(world["sd"].parent),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
    }
    command = f"env PYTHONPATH={slow} {sys.executable} -m sidecar"
    argv = ["check", "--sidecar", command, "--timeout", "120"]
    body = (
        f"BLEND = {str(run['_blend'])!r}\nARGV = {argv!r}\n" + (HERE / "cli_command.py").read_text()
    )
    proc = run_in_blender(tmp_path, world["zip"], body, extra_env=env, timeout=240)
    log = proc.stdout[-4000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and "genart: check: ok" in proc.stdout, log
    assert f"genart: sidecar: launching {command}" in proc.stdout, log
    assert f"sd.model = {world['sd']}: present" in proc.stdout, log
    assert (state / "logs" / "worker.log").is_file()
    pid = int(re.search(r"Sidecar ready: .*, pid (\d+),", proc.stdout).group(1))  # type: ignore[union-attr]
    deadline = time.monotonic() + 10  # the sidecar it launched is gone with the process
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
