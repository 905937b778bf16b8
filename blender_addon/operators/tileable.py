"""Tileable texture: a seamless texture from the prompt, as a new material on the
selected objects (box-projected or on their UVs)."""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from .generate import (
    NO_CONTROL,
    Action,
    GenerateOperator,
    Outcome,
    Prepared,
    kept_objects,
    selected_meshes,
    with_notes,
)


class Tileable(Action):
    name = "tileable"
    label = "Tileable texture"

    def prepare(self, context: bpy.types.Context, op: Any) -> Prepared:
        objects = selected_meshes(context, "select the mesh objects to give the tileable texture")
        filled = {"width": op.size, "height": op.size, "tileable": True, **NO_CONTROL}
        return Prepared("txt2img", filled, {}, {"objects": objects}, self.label)

    def apply(
        self,
        context: bpy.types.Context,
        op: Any,
        prepared: Prepared,
        pixels: np.ndarray,
        recipe: dict[str, Any],
    ) -> Outcome:
        from .. import images
        from ..apply import tileable

        objects = kept_objects(
            prepared.keep["objects"], "the objects were deleted while generating"
        )
        name = f"{objects[0].name} tileable"
        image = images.store_image(name, pixels, recipe)
        result = tileable.apply_tileable(
            objects, image, name=name, mapping=op.mapping, scale=op.scale
        )
        message = f"Tileable texture {image.name} on {len(objects)} object(s)"
        return Outcome(with_notes(message, result.notes), {"images": [image.name]})


class GENART_OT_tileable(GenerateOperator, bpy.types.Operator):
    """Generate a seamless texture from the prompt as a new material on the selected
    objects"""

    bl_idname = "genart.tileable"
    bl_label = "Tileable texture"
    bl_options = {"REGISTER", "UNDO"}
    recipe_image: bpy.props.StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]
    action = Tileable()

    size: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Size",
        default=512,
        min=64,
        max=4096,
        step=64,
        description="Side of the square texture in pixels",
    )
    mapping: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Mapping",
        items=(
            ("BOX", "Box", "Box-projected from object coordinates (no UVs needed)"),
            ("UV", "UV", "On the objects' active UV map (box where there is none)"),
        ),
        default="BOX",
    )
    scale: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="Repeats per unit",
        default=1.0,
        min=0.001,
        max=1000.0,
        description="How many times the texture repeats per scene unit (box mapping)",
    )
