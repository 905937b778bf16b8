"""The genart tab in the 3D view's sidebar (N panel): the sidecar's state, for now."""

from __future__ import annotations

import bpy

NOT_CONNECTED = "not connected"


def sidecar_state_text(context: bpy.types.Context) -> str:
    """One line for the sidecar's state; a placeholder until the session object exists."""
    return NOT_CONNECTED


class VIEW3D_PT_genart(bpy.types.Panel):
    bl_label = "genart"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "genart"

    def draw(self, context: bpy.types.Context) -> None:
        self.layout.label(text=f"Sidecar: {sidecar_state_text(context)}")
