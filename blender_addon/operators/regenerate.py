"""Re-generate: run the action that made a genart image again, with its recipe."""

from __future__ import annotations

import bpy

from ..optypes import OperatorResult

OPERATORS = {  # recipe "action" -> operator id
    "texture_from_camera": "texture_from_camera",
    "tileable": "tileable",
    "background": "background",
}


class GENART_OT_regenerate(bpy.types.Operator):
    """Make this image again with the recipe stored on it (engine, model, prompt, seed,
    steps...), from the scene as it is now"""

    bl_idname = "genart.regenerate"
    bl_label = "Re-generate"
    bl_options = {"REGISTER"}

    image: bpy.props.StringProperty(name="Image")  # type: ignore[valid-type]

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        from .. import images

        # Typed by hand: the stubs' bpy_prop_collection.get returns only its default's type.
        img: bpy.types.Image | None = bpy.data.images.get(self.image)
        recipe = images.recipe_of(img) if img is not None else None
        if img is None or not recipe:
            self.report({"ERROR"}, f"image {self.image!r} has no genart recipe")
            return {"CANCELLED"}
        op_id = OPERATORS.get(str(recipe.get("action")))
        if op_id is None:
            self.report({"ERROR"}, f"unknown genart action {recipe.get('action')!r} in the recipe")
            return {"CANCELLED"}
        # bpy.ops.genart holds our operators, registered at run time: the stubs lack it.
        op = getattr(bpy.ops.genart, op_id)  # type: ignore[attr-defined]
        mode = "EXEC_DEFAULT" if bpy.app.background else "INVOKE_DEFAULT"
        options = recipe.get("options") or {}
        return op(mode, recipe_image=img.name, **options)
