"""Set up passes: adds (or refreshes) the compositor node through which the scene's own
renders write the passes that stylize renders' coherence needs (`render_passes`). Turning
Stylize renders on does the same; this is for a .blend saved without the node, or after
the output path changed."""

from __future__ import annotations

import bpy

from .. import render_passes
from ..optypes import OperatorResult


class GENART_OT_setup_render_passes(bpy.types.Operator):
    """Make the scene's renders write the motion vectors and depth that coherent stylize
    renders need (a compositor File Output node, genart passes)"""

    bl_idname = "genart.setup_render_passes"
    bl_label = "Set up passes"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        scene = context.scene
        if scene is None:
            self.report({"ERROR"}, "Set up passes: no scene")
            return {"CANCELLED"}
        line = render_passes.ensure(scene)
        why = render_passes.missing_reason(scene)
        self.report({"WARNING" if why else "INFO"}, line + (f"; but {why}" if why else ""))
        return {"FINISHED"}
