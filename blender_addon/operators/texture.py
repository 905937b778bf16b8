"""Texture from camera: depth-controlled generation from the camera's view, projected onto
the selected meshes (new UV map, image and material; the user's data untouched)."""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from .. import capture
from .._vendor.genart_protocol import Attachment
from .generate import (
    Action,
    ActionError,
    GenerateOperator,
    Outcome,
    Prepared,
    fit_render,
    kept_objects,
    scene_output_dir,
    selected_meshes,
    with_notes,
)


class TextureFromCamera(Action):
    name = "texture_from_camera"
    label = "Texture from camera"

    def prepare(self, context: bpy.types.Context, op: Any) -> Prepared:
        scene = context.scene
        assert scene is not None  # operators run with a scene; the stubs type it Optional
        objects = selected_meshes(
            context, "select the mesh objects to texture (others are ignored)"
        )
        if scene.camera is None:
            raise ActionError("the scene has no active camera: add one and make it active")
        uncontrolled = self._check_control(scene)
        w, h = fit_render(scene, op.size)
        try:
            cap = capture.capture_camera(
                scene,
                scene_output_dir(context, "texture"),
                width=w,
                height=h,
                passes=("depth", "normal"),
            )
            passes_path = cap.passes_path
            assert passes_path is not None  # set when passes are asked for
            depth = capture.read_pass(passes_path, "Depth")
        except capture.CaptureError as exc:
            raise ActionError(str(exc)) from None
        inputs = {"passes": Attachment.blob("passes", passes_path.read_bytes(), "exr")}
        if op.use_render or uncontrolled:  # without control the render is all to follow
            inputs["image"] = Attachment.blob("image", cap.color_path.read_bytes(), "png")
        keep = {"capture": cap, "depth": depth, "objects": objects, "notes": uncontrolled}
        return Prepared("control", cap.request_params(), inputs, keep, self.label)

    @staticmethod
    def _check_control(scene: bpy.types.Scene) -> list[str]:
        """The chosen engine should control by depth or normals with its current values.
        When it cannot (e.g. a model is set without a ControlNet) the render is sent
        and the engine runs image-to-image on it: returns that note for the report."""
        from .. import bridge, properties

        # scene.genart is registered at run time (properties.register): the stubs lack it.
        settings = scene.genart  # type: ignore[attr-defined]
        name = properties.chosen_engine(settings, "control")
        spec = properties.engine_spec(name)
        if name is None or spec is None:
            return []  # the bridge reports a missing engine with its own message
        caps = {
            c.key: c for c in bridge.capabilities(spec, properties.engine_group(settings, name))
        }
        wanted = [caps[k] for k in ("depth_control", "normal_control") if k in caps]
        if wanted and not any(c.available for c in wanted):
            lacking = "; ".join(c.text for c in wanted)
            return [
                f"no depth control ({lacking}): image-to-image on the render only; set a "
                "ControlNet under genart > Controlled by the render to follow the shapes"
            ]
        return []

    def apply(
        self,
        context: bpy.types.Context,
        op: Any,
        prepared: Prepared,
        pixels: np.ndarray,
        recipe: dict[str, Any],
    ) -> Outcome:
        from .. import images, projection

        cap: capture.Capture = prepared.keep["capture"]
        objects = kept_objects(
            prepared.keep["objects"], "the objects to texture were deleted while generating"
        )
        recipe = {**recipe, "near": cap.near, "far": cap.far, "camera": list(cap.camera_matrix)}
        more = f" +{len(objects) - 1}" if len(objects) > 1 else ""
        name = f"{objects[0].name}{more} from camera"
        image = images.store_image(name, pixels, recipe)
        depth_image = images.store_float_image(f"{name} depth", prepared.keep["depth"])
        scene = context.scene
        assert scene is not None  # operators run with a scene; the stubs type it Optional
        result = projection.apply_projection(scene, objects, cap, image, depth_image, name=name)
        done = len(objects) - len(result.skipped)
        message = f"Textured {done} object(s) from the camera into {image.name}"
        notes = [*prepared.keep.get("notes", []), *result.notes]
        return Outcome(with_notes(message, notes), {"images": [image.name]})


class GENART_OT_texture_from_camera(GenerateOperator, bpy.types.Operator):
    """Generate a texture from the active camera's view (depth-controlled) and project it
    onto the selected meshes, where the camera sees them"""

    bl_idname = "genart.texture_from_camera"
    bl_label = "Texture from camera"
    bl_options = {"REGISTER", "UNDO"}
    recipe_image: bpy.props.StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]
    action = TextureFromCamera()

    size: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Size",
        default=768,
        min=64,
        max=4096,
        description="Longer side of the generated image in pixels (the camera's aspect)",
    )
    use_render: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Start from the render",
        default=False,
        description="Use the camera's render as the starting image (image-to-image), "
        "not only its depth (always so when the engine has no depth or normal control)",
    )
