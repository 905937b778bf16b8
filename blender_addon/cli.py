"""`blender -b scene.blend --command genart <subcommand> ...`: the add-on's actions headless.

The extension registers `main` as Blender's `genart` command (`bpy.utils.register_cli_command`);
Blender loads the .blend, passes the arguments after `genart` to `main(argv)` and exits with
what it returns. Subcommands: `check` (farm readiness: the extension, the sidecar, the
scene's models), `texture`, `tileable`, `background` and `stylize`, with flags mirroring
the panel. The generating subcommands set the scene's engine and parameters as the panel
would (`--engine`, `--model`, `--param KEY=VALUE` typed by the engine's schema), then run
the same operator the panel's button runs, which blocks and prints progress lines.

Output contract: progress on stdout; exit status 0 only on success; any failure is ONE line
`genart: error: <reason>` on stderr with status 1 (2 for a bad flag or value), never a
traceback (GENART_DEBUG=1 adds it, for developers).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

import bpy

from . import bridge, properties, runtime
from ._vendor.genart_protocol import GenartError
from .client import settings as S
from .client.session import CONNECT, DEAD, READY, STARTING, STOPPED, Session

COMMAND = "genart"
OK, FAILED, USAGE = 0, 1, 2
READY_TIMEOUT = 60.0  # seconds (--timeout): the sidecar up and its engines loaded
PING_TIMEOUT = 5.0
HASH_TIMEOUT = 900.0  # seconds: hashing a worker's models the first time reads every file
LIST_TIMEOUT = 60.0  # seconds: listing without hashes reads configs and headers only
TASK_OF = {
    "texture": "control",
    "tileable": "txt2img",
    "background": "txt2img",
    "stylize": "sequence",
}
# Engine parameters that name a model (a path or a repo id): model, clip_model,
# depth_controlnet, normal_controlnet, loras, preview_vae ...
MODEL_PARAM = re.compile(r"(?:^|_)(?:model|controlnet|loras?|vae|checkpoint|adapter)$")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
HOW_TO_CONNECT = (
    "set --sidecar (a launch command, host:port or a connection.json) or GENART_SIDECAR / "
    "GENART_CONNECTION_FILE"
)


class CliError(Exception):
    """A failure the user can act on: one line, and the exit status."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message, self.code = message, code


class _Exit(Exception):
    """argparse finished early (--help): exit with `code`, nothing wrong."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that never exits the process: Blender's whole session would end with it."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see: {self.prog} --help)", USAGE)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def _scene() -> bpy.types.Scene:
    scene = bpy.context.scene
    if scene is None:
        raise CliError("no scene is loaded")
    return scene


def _settings() -> Any:
    """`scene.genart` (properties.py adds it at registration, unknown to the stubs)."""
    return _scene().genart  # type: ignore[attr-defined]


def _ops() -> Any:
    return bpy.ops.genart  # type: ignore[attr-defined]  # registered at run time


def _view_layer() -> bpy.types.ViewLayer:
    layer = bpy.context.view_layer
    if layer is None:
        raise CliError("no view layer is active")
    return layer


def _say(line: str) -> None:
    print(f"genart: {line}", flush=True)


# -- the command line --------------------------------------------------------------------
def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=COMMAND,
        allow_abbrev=False,
        description="genart in background mode: blender -b FILE.blend --command genart ...",
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    conn = _Parser(add_help=False, allow_abbrev=False)
    conn.add_argument(
        "--sidecar",
        metavar="COMMAND|HOST:PORT|FILE.json",
        help="launch this command (e.g. /venv/bin/python), connect to host:port (its token "
        "from GENART_CONNECTION_FILE) or through this connection file; default: the "
        "preferences and GENART_* variables",
    )
    conn.add_argument(
        "--timeout",
        type=float,
        default=READY_TIMEOUT,
        metavar="S",
        help=f"seconds the sidecar has to come up with its engines (default {READY_TIMEOUT:g})",
    )
    gen = _Parser(add_help=False, allow_abbrev=False)
    gen.add_argument("--engine", help="the engine for this action's task (saved in the scene)")
    for flag, kind in (
        ("--model", str),
        ("--depth-controlnet", str),
        ("--prompt", str),
        ("--negative-prompt", str),
        ("--seed", int),
        ("--steps", int),
        ("--strength", float),
    ):
        gen.add_argument(flag, type=kind, help=f"the engine's {flag[2:].replace('-', '_')}")
    gen.add_argument(
        "--param",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any parameter of the engine, typed by its schema (lists: 1,2,3; texts: a;b)",
    )
    gen.add_argument("--size", type=int, help="output size in pixels (the action's own meaning)")
    gen.add_argument("--save", action="store_true", help="save the .blend afterwards")
    objs = _Parser(add_help=False, allow_abbrev=False)
    objs.add_argument(
        "--objects",
        nargs="+",
        metavar="NAME",
        help="the meshes to work on (default: the selected meshes, else every visible mesh)",
    )

    check = sub.add_parser(
        "check", parents=[conn], help="is this machine ready to run the scene's genart work?"
    )
    check.add_argument(
        "--task",
        action="append",
        choices=properties.TASKS,
        help="check only the engines of these tasks (default: all; a farm that only "
        "stylizes renders: --task sequence)",
    )
    check.add_argument(
        "--no-hash", action="store_true", help="do not compare the models' sha256 (faster)"
    )
    texture = sub.add_parser(
        "texture", parents=[conn, gen, objs], help="texture from camera (depth-controlled)"
    )
    texture.add_argument(
        "--use-render", action="store_true", help="start from the camera's render (img2img)"
    )
    tileable = sub.add_parser(
        "tileable", parents=[conn, gen, objs], help="a seamless texture as a new material"
    )
    tileable.add_argument("--mapping", type=str.upper, choices=("BOX", "UV"))
    tileable.add_argument("--scale", type=float, help="repeats per scene unit (box mapping)")
    background = sub.add_parser(
        "background", parents=[conn, gen], help="a 360° World or a camera backdrop"
    )
    background.add_argument("--kind", type=str.upper, choices=("WORLD", "BACKDROP"))
    background.add_argument(
        "--camera-only",
        action=argparse.BooleanOptionalAction,
        help="show the panorama to the camera only (default: on)",
    )
    stylize = sub.add_parser(
        "stylize", parents=[conn, gen], help="stylize the rendered animation into the timeline"
    )
    stylize.add_argument("--frame-start", type=int)
    stylize.add_argument("--frame-end", type=int)
    stylize.add_argument("--output", help="frames folder (default //genart/<name>/)")
    stylize.add_argument("--name", help="the strip's and the frames' name")
    stylize.add_argument("--mp4", action="store_true", help="also encode an MP4")
    stylize.add_argument(
        "--coherence",
        choices=("exact-flow", "off"),
        help="carry each stylized frame to the next along the render's motion vectors "
        "(default exact-flow) or stylize every frame on its own",
    )
    stylize.add_argument(
        "--warmup",
        type=int,
        metavar="N",
        help="a farm's chunk (--frame-start past the scene's start): first stylize N frames "
        "before it, not written, so the chunk carries on coherently; frame start-1's "
        "stylized file is used instead when it is there (default 8)",
    )
    return parser


# -- the sidecar -------------------------------------------------------------------------
def use_sidecar(value: str | None) -> None:
    """`--sidecar` as the environment variables client/settings.py resolves (they win over
    the preferences): host:port -> GENART_SIDECAR (the token from GENART_CONNECTION_FILE
    or the state dir's file); FILE.json -> GENART_CONNECTION_FILE alone (the file names
    the address); anything else -> GENART_SIDECAR, a launch command."""
    value = (value or "").strip()
    if not value:
        return
    if S.is_address(value):
        os.environ[S.ENV_SIDECAR] = value
    elif value.lower().endswith(".json"):
        os.environ[S.ENV_CONNECTION_FILE] = os.path.abspath(os.path.expanduser(value))
        os.environ.pop(S.ENV_SIDECAR, None)  # it would win over the file
    else:
        os.environ[S.ENV_SIDECAR] = value


def _describe(eff: S.EffectiveSettings) -> str:
    if eff.mode != CONNECT:
        return "launching " + " ".join(eff.launch_command)
    return f"connecting to {eff.address}" if eff.address else f"through {eff.connection_file}"


def connect(timeout: float) -> Session:
    """The add-on's session, ready with its engines loaded and the parameter groups built."""
    from .preferences import preferences

    try:
        eff = preferences(bpy.context).effective()
    except (KeyError, ValueError) as exc:
        raise CliError(f"genart settings are invalid: {exc}; {HOW_TO_CONNECT}") from None
    session = runtime.session()
    if session.state in (STOPPED, DEAD) or session.settings != eff:
        session.start(eff)
    if session.state != READY:
        _say(f"sidecar: {_describe(eff)}")
    if session.wait(timeout, stop_on_failure=True) != READY:
        reason = session.reason or f"no answer within {timeout:g} s"
        session.stop()
        raise CliError(
            f"the sidecar is not reachable ({_describe(eff)}): {reason}; {HOW_TO_CONNECT}"
        )
    _await_engines(session, timeout)
    properties.sync_engines(session.welcome)
    return session


def _await_engines(session: Session, timeout: float) -> None:
    """A sidecar whose worker is still importing its libraries welcomes with no engines;
    wait (pinging) until they are loaded, then connect again for the full welcome."""
    if session.welcome.get("engines_ready", True) and session.welcome.get("engines"):
        return
    _say("sidecar: waiting for its engines to load")
    deadline = time.monotonic() + timeout
    while True:
        client = session.client
        try:
            if client is None:
                raise OSError("the connection was lost")
            pong = client.request("ping").result(PING_TIMEOUT).result
        except (GenartError, FutureTimeout, OSError) as exc:
            raise CliError(
                f"the sidecar stopped answering while loading its engines: {exc}"
            ) from None
        if pong.get("engines_ready"):
            break
        if time.monotonic() >= deadline:
            raise CliError(
                f"the sidecar's engines did not load within {timeout:g} s (see logs/worker.log "
                "in its state dir; --timeout gives it longer)"
            )
        time.sleep(0.25)
    if session.owned:
        # The welcome is sent once per connection: reconnect to the sidecar we launched
        # (the session's launch watch connects again to the same process).
        old, session.client = session.client, None
        session.state = STARTING
        if old is not None:
            old.close()
    elif session.settings is not None:
        session.start(session.settings)  # connect mode: stop() leaves the sidecar running
    if session.wait(timeout, stop_on_failure=True) != READY or not session.welcome.get("engines"):
        raise CliError(f"the sidecar offers no engines after loading them: {session.text}")


# -- the scene's engine and parameters ---------------------------------------------------
def _is_absolute(ref: str) -> bool:
    """Absolute on the sidecar's machine, whatever its system; `//x` is Blender's relative."""
    if ref.startswith("//"):
        return False
    return PurePosixPath(ref).is_absolute() or PureWindowsPath(ref).is_absolute()


def _looks_like_path(ref: str) -> bool:
    """What the sidecar's loaders treat as a file or folder, not a repo id."""
    return (
        ref.startswith((".", "/", "~"))
        or "\\" in ref
        or ref.lower().endswith(WEIGHT_SUFFIXES)
        or _is_absolute(ref)
        or os.path.exists(ref)
    )


def absolute_ref(ref: str) -> str:
    """A model reference as the sidecar must get it: paths absolute (`//` is relative to
    the .blend, other relative paths to the current folder), repo ids as they are."""
    ref = ref.strip()
    if ref.startswith("//"):
        return os.path.normpath(bpy.path.abspath(ref))
    if ref and _looks_like_path(ref) and not _is_absolute(ref):
        return os.path.abspath(os.path.expanduser(ref))
    return ref


def is_model_param(spec: properties.ParamSpec) -> bool:
    return spec.type in ("string", "string_list") and bool(MODEL_PARAM.search(spec.name))


def _typed(spec: properties.ParamSpec, value: Any, flag: str) -> Any:
    """A command-line value as the parameter's type (texts from --param)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if spec.type == "int":
            return int(text)
        if spec.type == "float":
            return float(text)
    except ValueError:
        kind = "an integer" if spec.type == "int" else "a number"
        raise CliError(f"{flag}: {spec.field} must be {kind}, not {value!r}", USAGE) from None
    if spec.type == "bool":
        if text.lower() not in TRUE | FALSE:
            raise CliError(f"{flag}: {spec.field} must be true or false, not {value!r}", USAGE)
        return text.lower() in TRUE
    if spec.type in properties.LIST_TYPES:
        return bridge.parse_list(spec, value)
    return value


def set_param(engine: properties.EngineSpec, name: str, value: Any, flag: str) -> None:
    """`scene.genart.engines.<engine>.<name> = value`, typed and checked by the schema."""
    spec = engine.param(name)
    drawn = ", ".join(p.name for p in engine.drawn_params())
    if spec is None:
        raise CliError(f"{flag}: engine {engine.name} has no parameter {name!r} ({drawn})", USAGE)
    if name in properties.ADDON_FILLED:
        raise CliError(f"{flag}: {spec.field} is set by the action (--size, its flags)", USAGE)
    group = properties.engine_group(_settings(), engine.name)
    if group is None or not hasattr(group, spec.prop):
        raise CliError(f"{flag}: {spec.field} has a type this add-on cannot set", USAGE)
    try:
        typed = _typed(spec, value, flag)
        if is_model_param(spec):
            typed = (
                [absolute_ref(v) for v in typed] if isinstance(typed, list) else absolute_ref(typed)
            )
        checked = bridge.check_value(spec, typed)
    except GenartError as exc:  # InvalidParams, naming the field
        raise CliError(f"{flag}: {getattr(exc, 'message', exc)}", USAGE) from None
    stored = (
        properties.format_list(spec.type, checked)
        if spec.type in properties.LIST_TYPES
        else checked
    )
    try:
        setattr(group, spec.prop, stored)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CliError(
            f"{flag}: Blender refused {value!r} for {spec.field}: {exc}", USAGE
        ) from None
    if spec.type == "int" and getattr(group, spec.prop) != checked:
        raise CliError(
            f"{flag}: {spec.field} = {checked} does not fit Blender's 32-bit ints", USAGE
        )


def configure(args: argparse.Namespace, task: str) -> properties.EngineSpec:
    """The engine for `task` and the parameters given on the command line, into the scene."""
    settings = _settings()
    if args.engine:
        offered = properties.offered(task)
        if args.engine not in offered:
            raise CliError(
                f"--engine {args.engine}: the sidecar offers {', '.join(offered) or 'none'} "
                f"for {task}",
                USAGE,
            )
        setattr(settings, f"{task}_engine", args.engine)
    name = properties.chosen_engine(settings, task)
    engine = properties.engine_spec(name)
    if engine is None:
        raise CliError(f"no engine of the sidecar offers {task}")
    for flag in ("model", "depth_controlnet", "prompt", "negative_prompt", "seed", "steps"):
        if getattr(args, flag) is not None:
            set_param(engine, flag, getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.strength is not None:
        set_param(engine, "strength", args.strength, "--strength")
    for key, value in args.param:
        set_param(engine, key, value, f"--param {key}")
    return engine


# -- running an operator -----------------------------------------------------------------
def report_line(exc: BaseException) -> str:
    """The reports bpy.ops raised (RuntimeError 'Error: ...') as one line, no traceback."""
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        return lines[-1] if lines else "the operator failed"
    parts = [re.sub(r"^(Error|Warning|Info):\s*", "", x.strip()) for x in text.splitlines()]
    return "; ".join(p for p in parts if p) or "the operator failed"


def _datablocks() -> dict[str, set[str]]:
    return {
        kind: {d.name for d in getattr(bpy.data, kind)}
        for kind in ("images", "materials", "worlds", "objects")
    }


def run_operator(label: str, op: Callable[..., set[str]], options: dict[str, Any]) -> None:
    before = _datablocks()
    t0 = time.monotonic()
    try:
        result = op(**{k: v for k, v in options.items() if v is not None})
    except RuntimeError as exc:
        raise CliError(report_line(exc)) from None
    except TypeError as exc:  # an option the operator does not take
        raise CliError(f"{label}: {exc}") from None
    if "FINISHED" not in result:
        raise CliError(
            f"{label} did not finish ({', '.join(sorted(result))}); the scene is unchanged"
        )
    after = _datablocks()
    made = [f"{k[:-1]} {n}" for k in after for n in sorted(after[k] - before[k])]
    made = [m for m in made if not m.endswith(("genart preview", "Render Result"))]
    took = time.monotonic() - t0
    _say(f"{label.lower()}: done in {took:.1f} s; new: {', '.join(made) or 'nothing'}")


def select_objects(names: Sequence[str] | None) -> Callable[[], None]:
    """Selects the meshes to work on; returns what restores the user's selection."""
    layer = _view_layer()
    objects = layer.objects
    was = [o.name for o in objects if o.select_get()]
    was_active = objects.active.name if objects.active is not None else None
    if names:
        for name in names:
            ob = objects.get(name)
            if ob is None:
                raise CliError(f"--objects: no object named {name!r} in the view layer", USAGE)
            if ob.type != "MESH":
                raise CliError(f"--objects: {name!r} is a {ob.type.lower()}, not a mesh", USAGE)
        chosen = list(names)
    else:
        meshes = [o for o in objects if o.type == "MESH"]
        chosen = [o.name for o in meshes if o.select_get()]
        chosen = chosen or [o.name for o in meshes if o.visible_get()]
        if not chosen:
            raise CliError("the scene has no visible mesh to work on (--objects NAME...)")
    for ob in objects:
        ob.select_set(ob.name in chosen)
    unselectable = [n for n in chosen if not objects[n].select_get()]
    if unselectable:
        raise CliError(f"--objects: cannot select {', '.join(unselectable)} (hidden?)", USAGE)
    objects.active = objects[chosen[0]]
    _say(f"objects: {', '.join(chosen)}")

    def restore() -> None:
        for ob in layer.objects:
            ob.select_set(ob.name in was)
        layer.objects.active = layer.objects.get(was_active) if was_active else None

    return restore


def save() -> None:
    path = bpy.data.filepath
    if not path:
        raise CliError("--save: this scene has no file (run blender -b FILE.blend --command ...)")
    try:
        bpy.ops.wm.save_mainfile()
    except RuntimeError as exc:
        raise CliError(f"--save: {report_line(exc)}") from None
    _say(f"saved {path}")


def _generate(args: argparse.Namespace, label: str, op: Any, options: dict[str, Any]) -> int:
    connect(args.timeout)
    engine = configure(args, TASK_OF[args.command])
    _say(f"{label.lower()}: engine {engine.name}")
    restore = select_objects(args.objects) if hasattr(args, "objects") else None
    try:
        run_operator(label, op, options)
    finally:
        if restore is not None:
            restore()
    if args.save:
        save()
    return OK


def cmd_texture(args: argparse.Namespace) -> int:
    options = {"size": args.size, "use_render": args.use_render or None}
    return _generate(args, "Texture from camera", _ops().texture_from_camera, options)


def cmd_tileable(args: argparse.Namespace) -> int:
    options = {"size": args.size, "mapping": args.mapping, "scale": args.scale}
    return _generate(args, "Tileable texture", _ops().tileable, options)


def cmd_background(args: argparse.Namespace) -> int:
    options = {"kind": args.kind, "size": args.size, "camera_only": args.camera_only}
    return _generate(args, "Background", _ops().background, options)


def cmd_stylize(args: argparse.Namespace) -> int:
    op = _ops().stylize_animation
    try:
        rna = op.get_rna_type()
    except KeyError:
        raise CliError(
            "stylize: this version of the genart extension has no Stylize animation "
            "operator (genart.stylize_animation); install a newer one"
        ) from None
    options = {
        "frame_start": args.frame_start,
        "frame_end": args.frame_end,
        "size": args.size,
        "output": args.output,
        "name": args.name,
        "mp4": args.mp4 or None,
        "coherence": args.coherence.upper().replace("-", "_") if args.coherence else None,
        "warmup": args.warmup,
    }
    takes = {p.identifier for p in rna.properties}
    missing = [k for k, v in options.items() if v is not None and k not in takes]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise CliError(f"stylize: this version's operator does not take {flags}", USAGE)
    return _generate(args, "Stylize animation", op, options)


# -- check -------------------------------------------------------------------------------
def model_refs(tasks: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(label, reference) for every model the scene's engines for `tasks` name, and the
    labels of model parameters left empty."""
    settings = _settings()
    refs: list[tuple[str, str]] = []
    unset: list[str] = []
    seen: set[str] = set()
    for task in tasks:
        name = properties.chosen_engine(settings, task)
        engine = properties.engine_spec(name)
        if engine is None or engine.name in seen:
            continue
        seen.add(engine.name)
        group = properties.engine_group(settings, engine.name)
        for spec in engine.params:
            if not is_model_param(spec) or not hasattr(group, spec.prop):
                continue
            value = bridge.read_value(group, spec)
            values = [v for v in (value if isinstance(value, list) else [value]) if v.strip()]
            label = f"{engine.name}.{spec.name}"
            refs.extend((label, v.strip()) for v in values)
            if not values and spec.name == "model":
                unset.append(label)
    return refs, unset


def recipe_hashes() -> dict[str, set[str]]:
    """model -> the sha256s the scene's generated images record (their recipes)."""
    from . import images

    out: dict[str, set[str]] = {}
    for image in bpy.data.images:
        if image.get(images.PROP) is None:
            continue
        recipe = images.recipe_of(image) or {}
        model, sha = recipe.get("model"), recipe.get("model_sha256")
        if isinstance(model, str) and model and isinstance(sha, str) and sha:
            out.setdefault(model, set()).add(sha)
    return out


def list_models(session: Session, hashed: bool) -> dict[str, Any]:
    client = session.client
    if client is None:
        raise CliError("the sidecar connection was lost")
    timeout = HASH_TIMEOUT if hashed else LIST_TIMEOUT
    note = " and hashing them (the first time reads every file)" if hashed else ""
    _say(f"check: listing the sidecar's models{note}")
    try:
        listing = client.request("models", {"hash": hashed}).result(timeout).result
    except FutureTimeout:
        raise CliError(f"the sidecar did not list its models within {timeout:g} s") from None
    except (GenartError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise CliError(f"the sidecar could not list its models: {message}") from None
    session.models = list(listing.get("models") or [])  # recipes made next record the hashes
    return dict(listing)


def _find(models: Sequence[dict[str, Any]], ref: str) -> dict[str, Any] | None:
    def norm(p: str) -> str:
        return p.rstrip("/\\")

    return next(
        (m for m in models if ref == m.get("id") or norm(ref) == norm(str(m.get("path", "")))),
        None,
    )


def _version() -> str:
    try:
        with open(Path(__file__).with_name("blender_manifest.toml"), "rb") as fh:
            return str(tomllib.load(fh).get("version", "?"))
    except (OSError, tomllib.TOMLDecodeError):
        return "?"


def cmd_check(args: argparse.Namespace) -> int:
    from .operators.check_sidecar import check_text

    package = __package__ or COMMAND
    prefs = bpy.context.preferences
    if prefs is None or package not in prefs.addons:
        raise CliError(f"the genart extension ({package}) is not enabled in this Blender")
    _say(f"check: extension genart {_version()} enabled ({package})")
    session = connect(args.timeout)
    t0 = time.monotonic()
    pong_ms: float | None = None
    if session.client is not None:
        try:
            session.client.request("ping").result(PING_TIMEOUT)
            pong_ms = (time.monotonic() - t0) * 1000.0
        except (GenartError, FutureTimeout, OSError) as exc:
            raise CliError(f"the sidecar does not answer ping: {exc}") from None
    _say("check: " + check_text(session, pong_ms).split("; ")[0])
    tasks = args.task or list(properties.TASKS)
    settings = _settings()
    engines = {t: properties.chosen_engine(settings, t) for t in tasks}
    _say("check: engines: " + ", ".join(f"{t} {e or '(none offered)'}" for t, e in engines.items()))
    problems = []
    for task in tasks:  # a scene's engine this sidecar lacks would silently become another
        chosen = getattr(settings, f"{task}_engine_name", "")
        if chosen and chosen not in properties.offered(task):
            offered = ", ".join(properties.offered(task)) or "none"
            problems.append(
                f"the scene uses engine {chosen} for {task}, not on this sidecar "
                f"(it offers {offered})"
            )
    toggle = getattr(settings, "stylize_renders", None)
    if toggle is not None:
        _say(f"check: stylize renders: {'on' if toggle else 'off'}")

    refs, unset = model_refs(tasks)
    for label in unset:
        _say(f"check: {label}: not set")
    if not refs:
        _say("check: the scene's engines name no models")
    listing = list_models(session, hashed=not args.no_hash) if refs else {}
    models = listing.get("models") or []
    roots = ", ".join([*map(str, listing.get("roots") or []), str(listing.get("hf_cache", ""))])
    if refs:
        _say(f"check: the sidecar has {len(models)} models (in {roots})")
    made_with = recipe_hashes()
    for label, ref in refs:
        if _looks_like_path(ref) and not _is_absolute(ref):
            problems.append(f"{label} = {ref} is not an absolute path")
            continue
        entry = _find(models, ref)
        if entry is None:
            problems.append(
                f"{label} = {ref} is not among the sidecar's models (its --models folders, "
                "GENART_MODELS and Hugging Face cache)"
            )
            continue
        sha = entry.get("sha256")
        wanted = made_with.get(ref, set())
        if sha and wanted and sha not in wanted:
            problems.append(
                f"{label} = {ref} differs from the model the scene's images were made with "
                f"(sha256 {sha[:12]} here, {', '.join(w[:12] for w in sorted(wanted))} in "
                "their recipes)"
            )
            continue
        what = f"{entry.get('family', '?')} {entry.get('kind', '?')}"
        digest = f", sha256 {sha[:12]}" if sha else ""
        same = ", as in the scene's images" if sha and wanted else ""
        _say(f"check: {label} = {ref}: present ({what}{digest}{same})")
    if problems:
        raise CliError("check failed: " + "; ".join(problems))
    _say("check: ok")
    return OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "texture": cmd_texture,
    "tileable": cmd_tileable,
    "background": cmd_background,
    "stylize": cmd_stylize,
}


def main(argv: Sequence[str]) -> int:
    """The `genart` command: Blender calls it with the arguments after `--command genart`
    and exits with what it returns (0 success, 1 failure, 2 bad usage)."""
    try:
        args = build_parser().parse_args(list(argv))
        use_sidecar(getattr(args, "sidecar", None))
        code = COMMANDS[args.command](args)
    except _Exit as done:
        return done.code
    except CliError as exc:
        code = exc.code
        message = " ".join(exc.message.split())
        print(f"{COMMAND}: error: {message}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"{COMMAND}: error: interrupted", file=sys.stderr, flush=True)
        code = 130
    except Exception as exc:  # the command's one boundary: a line, never a traceback
        if os.environ.get("GENART_DEBUG") == "1":
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{COMMAND}: error: internal error: {message}", file=sys.stderr, flush=True)
        code = FAILED
    sys.stdout.flush()
    return code


class _Registered:
    """The command's handle while the extension is registered: Blender wants it back to
    unregister (like runtime.RUNTIME, a documented holder, not loose module state)."""

    handle: Any = None


def register() -> None:
    if _Registered.handle is None and hasattr(bpy.utils, "register_cli_command"):
        _Registered.handle = bpy.utils.register_cli_command(COMMAND, main)  # type: ignore[func-returns-value]


def unregister() -> None:
    handle, _Registered.handle = _Registered.handle, None
    if handle is not None:
        bpy.utils.unregister_cli_command(handle)


def registered() -> bool:
    """Whether the `genart` command is registered with Blender now (tests, check)."""
    return _Registered.handle is not None


__all__ = ["COMMAND", "build_parser", "main", "register", "registered", "unregister"]
