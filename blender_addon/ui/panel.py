"""The genart tab in the 3D view's sidebar (N panel): the sidecar's state and a check."""

from __future__ import annotations

import bpy

from .. import runtime

ICONS = {"ready": "CHECKMARK", "dead": "ERROR", "restarting": "FILE_REFRESH"}


def sidecar_state_text(context: bpy.types.Context) -> str:
    """One line for the sidecar's state, from the add-on's session (cheap: no I/O)."""
    return runtime.session().text


class VIEW3D_PT_genart(bpy.types.Panel):
    bl_label = "genart"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "genart"

    def draw(self, context: bpy.types.Context) -> None:
        state = runtime.session().state
        col = self.layout.column()
        col.label(text=f"Sidecar: {sidecar_state_text(context)}", icon=ICONS.get(state, "NONE"))
        col.operator("genart.check_sidecar", icon="PLUGIN")
