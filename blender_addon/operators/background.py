"""Background: a 360° panorama as the environment of a new World (optionally seen by the
camera only), or a backdrop plane filling the camera's view."""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from .generate import (
    NO_CONTROL,
    Action,
    ActionError,
    GenerateOperator,
    Outcome,
    Prepared,
    fit_render,
)


class Background(Action):
    name = "background"
    label = "Background"

    def prepare(self, context: bpy.types.Context, op: Any) -> Prepared:
        if op.kind == "WORLD":
            filled = {"width": 2 * op.size, "height": op.size, "panorama": True, **NO_CONTROL}
        else:
            scene = context.scene
            assert scene is not None  # operators run with a scene; the stubs type it Optional
            if scene.camera is None:
                raise ActionError("a camera backdrop needs an active camera")
            w, h = fit_render(scene, op.size)
            filled = {"width": w, "height": h, **NO_CONTROL}
        return Prepared("txt2img", filled, {}, {}, self.label)

    def apply(
        self,
        context: bpy.types.Context,
        op: Any,
        prepared: Prepared,
        pixels: np.ndarray,
        recipe: dict[str, Any],
    ) -> Outcome:
        from .. import images
        from ..apply import world

        scene = context.scene
        assert scene is not None  # operators run with a scene; the stubs type it Optional
        if op.kind == "WORLD":
            image = images.store_image(f"{scene.name} panorama", pixels, recipe)
            new = world.apply_panorama(
                scene, image, camera_only=op.camera_only, name=f"{scene.name} panorama"
            )
            seen = " (camera only)" if op.camera_only else ""
            return Outcome(
                f"New World {new.name} with {image.name}{seen}", {"images": [image.name]}
            )
        camera = scene.camera
        if camera is None:
            raise ActionError("the scene lost its camera while generating")
        image = images.store_image(f"{camera.name} backdrop", pixels, recipe)
        plane = world.apply_backdrop(scene, camera, image, name=f"{camera.name} backdrop")
        return Outcome(f"Backdrop {plane.name} behind {camera.name}", {"images": [image.name]})


class GENART_OT_background(GenerateOperator, bpy.types.Operator):
    """Generate a background: a 360° panorama World, or a backdrop filling the camera"""

    bl_idname = "genart.background"
    bl_label = "Background"
    bl_options = {"REGISTER", "UNDO"}
    recipe_image: bpy.props.StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]
    action = Background()

    kind: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Kind",
        items=(
            ("WORLD", "360° World", "A 2:1 panorama as the environment of a new World"),
            ("BACKDROP", "Camera backdrop", "A plane filling the camera's view, unlit"),
        ),
        default="WORLD",
    )
    size: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Size",
        default=512,
        min=64,
        max=4096,
        description="Panorama height (its width is twice it), or the backdrop's longer side",
    )
    camera_only: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Camera only",
        default=True,
        description="Show the panorama to the camera only, so it does not relight the scene",
    )
