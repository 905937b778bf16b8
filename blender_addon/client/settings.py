"""Which sidecar the add-on uses: the add-on preferences, overridden by the environment.

A pure function of plain values (no `bpy`, standard library only, no relative imports), so
it is tested without Blender and gives render farms and scripts one way in:

- `GENART_SIDECAR=host:port` (or `tcp:host:port`) connects to that sidecar; any other
  non-empty value is the command that launches one (`/venv/bin/python` alone means
  `/venv/bin/python -m sidecar`).
- `GENART_CONNECTION_FILE=PATH` connects through that connection file (unless
  `GENART_SIDECAR` asks for a launch command, which then writes its file there).
- `GENART_STATE_DIR=DIR` is the state dir a launched sidecar uses (and where its
  connection file is looked for); `GENART_MODELS=DIR[:DIR...]` replaces the preference's
  model folders (a launched sidecar reads the variable itself).

An empty environment variable counts as unset.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

LAUNCH = "LAUNCH"
CONNECT = "CONNECT"
MODES = (LAUNCH, CONNECT)
ENV_SIDECAR = "GENART_SIDECAR"
ENV_CONNECTION_FILE = "GENART_CONNECTION_FILE"
ENV_STATE_DIR = "GENART_STATE_DIR"
ENV_MODELS = "GENART_MODELS"
DEFAULT_COMMAND = ("genart-sidecar",)

# host:port, tcp:host:port or [v6]:port; a Windows path such as C:\x has no digits after ':'.
_ADDRESS = re.compile(r"^(?:tcp:)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


@dataclass(frozen=True)
class EffectiveSettings:
    """What the session uses to reach a sidecar, and which environment variables decided it."""

    mode: str  # LAUNCH | CONNECT
    launch_command: tuple[str, ...]  # argv of the sidecar to start (LAUNCH)
    connection_file: str  # "" = the default state dir's connection.json
    address: str  # "host:port" to connect to; "" = use the connection file
    overridden_by: tuple[str, ...] = ()  # names of the environment variables that applied
    state_dir: str = ""  # "" = the platform's default (genart_protocol.default_state_dir)
    models: tuple[str, ...] = ()  # folders a launched sidecar lists models from (--models)


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (or `tcp:host:port`, `[::1]:port`) as (host, port); ValueError if not."""
    m = _ADDRESS.match(text.strip())
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"not a host:port address: {text!r}")
    return m.group(1).strip("[]"), int(m.group(2))


def is_address(text: str) -> bool:
    try:
        parse_address(text)
    except ValueError:
        return False
    return True


def launch_argv(text: str) -> tuple[str, ...]:
    """The argv for a launch command; a bare Python interpreter runs `-m sidecar`."""
    argv = tuple(shlex.split(text.strip()))
    if not argv:
        return DEFAULT_COMMAND
    if len(argv) == 1 and PurePath(argv[0]).name.lower().startswith("python"):
        return (*argv, "-m", "sidecar")
    return argv


def effective_settings(prefs: Mapping[str, Any], environ: Mapping[str, str]) -> EffectiveSettings:
    """Resolve the preferences (`mode`, `launch_command`, `connection_file`, `address`)
    against `environ`; the environment wins."""
    mode = str(prefs.get("mode") or LAUNCH)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    command = launch_argv(str(prefs.get("launch_command") or ""))
    connection_file = str(prefs.get("connection_file") or "")
    address = str(prefs.get("address") or "").strip()
    used: list[str] = []

    env_file = environ.get(ENV_CONNECTION_FILE, "").strip()
    if env_file:
        mode, connection_file, address = CONNECT, env_file, ""
        used.append(ENV_CONNECTION_FILE)

    env_sidecar = environ.get(ENV_SIDECAR, "").strip()
    if env_sidecar:
        if is_address(env_sidecar):
            mode, address = CONNECT, env_sidecar.removeprefix("tcp:")
        else:
            mode, command = LAUNCH, launch_argv(env_sidecar)
        used.append(ENV_SIDECAR)

    state_dir = str(prefs.get("state_dir") or "").strip()
    env_state = environ.get(ENV_STATE_DIR, "").strip()
    if env_state:
        state_dir = env_state
        used.append(ENV_STATE_DIR)
    models = split_folders(str(prefs.get("models") or ""))
    if environ.get(ENV_MODELS, "").strip():
        models = ()  # the sidecar reads GENART_MODELS itself; the preference steps aside
        used.append(ENV_MODELS)

    return EffectiveSettings(
        mode, command, connection_file, address, tuple(used), state_dir, models
    )


def split_folders(text: str) -> tuple[str, ...]:
    """Folders separated by ';' or newlines (a path may hold ':' on Windows)."""
    return tuple(p.strip() for p in re.split(r"[;\n]", text) if p.strip())
