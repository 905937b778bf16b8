"""The add-on's preferences: how to reach the sidecar (launch one, or connect to one).

The values here are only the user's defaults: `client.settings.effective_settings` applies
the environment overrides (GENART_SIDECAR, GENART_CONNECTION_FILE) on top of them.
"""

from __future__ import annotations

import os
from typing import Any, cast

import bpy

from .client import CONNECT, LAUNCH, EffectiveSettings, default_state_dir, effective_settings


class GENART_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    sidecar_mode: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Sidecar",
        items=(
            (LAUNCH, "Launch", "Start a sidecar for this Blender (it exits with Blender)"),
            (CONNECT, "Connect", "Use a sidecar that is already running (another machine too)"),
        ),
        default=LAUNCH,
    )
    launch_command: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Python or command",
        description=(
            "The sidecar environment's Python (run as 'python -m sidecar') or a full command; "
            "empty: genart-sidecar on PATH"
        ),
        subtype="FILE_PATH",
    )
    connection_file: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Connection file",
        description="The sidecar's connection.json; empty: the default state directory's",
        subtype="FILE_PATH",
    )
    address: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Address",
        description="host:port of a sidecar listening on TCP; empty: use the connection file",
    )

    state_dir: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="State folder",
        description=(
            "Where a launched sidecar keeps its jobs, logs and connection file (local disk, "
            "not a network share); empty: the per-user default"
        ),
        subtype="DIR_PATH",
    )
    models: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Model folders",
        description=(
            "Folders holding diffusers models and .safetensors files for a launched sidecar, "
            "separated by ';' (GENART_MODELS overrides)"
        ),
    )

    def settings_values(self) -> dict[str, Any]:
        return {
            "mode": self.sidecar_mode,
            "launch_command": bpy.path.abspath(self.launch_command),
            "connection_file": bpy.path.abspath(self.connection_file),
            "address": self.address,
            "state_dir": bpy.path.abspath(self.state_dir) if self.state_dir else "",
            "models": ";".join(
                bpy.path.abspath(p.strip()) for p in self.models.split(";") if p.strip()
            ),
        }

    def effective(self) -> EffectiveSettings:
        return effective_settings(self.settings_values(), os.environ)

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "sidecar_mode", expand=True)
        if self.sidecar_mode == LAUNCH:
            layout.prop(self, "launch_command")
            layout.prop(self, "models")
            layout.prop(self, "state_dir")
        else:
            layout.prop(self, "connection_file")
            layout.prop(self, "address")
        eff = self.effective()
        box = layout.box()
        if eff.overridden_by:
            box.label(text="Overridden by " + ", ".join(eff.overridden_by), icon="INFO")
        if eff.mode == LAUNCH:
            box.label(text="Launches: " + " ".join(eff.launch_command))
            box.label(text=f"State folder: {eff.state_dir or default_state_dir()}")
        elif eff.address:
            box.label(text=f"Connects to {eff.address}")
        else:
            path = eff.connection_file or str(default_state_dir() / "connection.json")
            box.label(text=f"Connects through {path}")


def preferences(context: bpy.types.Context) -> GENART_AddonPreferences:
    prefs = context.preferences
    assert prefs is not None  # the stubs type it Optional; an add-on always sees it set
    # Blender hands back our registered subclass; the stubs know only AddonPreferences.
    return cast(GENART_AddonPreferences, prefs.addons[__package__].preferences)


CLASSES = (GENART_AddonPreferences,)
