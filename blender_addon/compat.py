"""Differences between the Blender versions the add-on supports (4.5 LTS to 5.x), in one place.

Everything else in the add-on calls these instead of testing `bpy.app.version` itself
(DESIGN §9). Each function says which versions spell the thing which way.
"""

from __future__ import annotations

import glob
import os
import sys
from types import ModuleType
from typing import Any

import bpy

# 5.0 split the format enum: `media_type` picks image / multilayer / video first.
HAS_MEDIA_TYPE = hasattr(bpy.types.ImageFormatSettings, "bl_rna") and (
    "media_type" in bpy.types.ImageFormatSettings.bl_rna.properties
)

# EEVEE's engine id: 4.2-4.5 "BLENDER_EEVEE_NEXT", 5.0 back to "BLENDER_EEVEE".
EEVEE_IDS = ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT")
WORKBENCH = "BLENDER_WORKBENCH"
CYCLES = "CYCLES"


def image_format_attrs() -> tuple[str, ...]:
    """The ImageFormatSettings fields capture changes, in the order they must be restored
    (5.0: setting `media_type` resets `file_format`, so it comes first)."""
    head = ("media_type",) if HAS_MEDIA_TYPE else ()
    return (
        *head,
        "file_format",
        "color_mode",
        "color_depth",
        "exr_codec",
        "color_management",
    )


def set_multilayer_exr(fmt: Any) -> None:
    """Multilayer EXR, 32-bit float, uncompressed: every pass as exact linear data."""
    if HAS_MEDIA_TYPE:
        fmt.media_type = "MULTI_LAYER_IMAGE"  # 5.0+
    else:
        fmt.file_format = "OPEN_EXR_MULTILAYER"  # 4.5
    fmt.color_depth = "32"
    fmt.exr_codec = "NONE"


def set_png(fmt: Any, color_mode: str = "RGBA") -> None:
    """8-bit PNG that follows the scene's colour management (display-referred)."""
    if HAS_MEDIA_TYPE:
        fmt.media_type = "IMAGE"
    fmt.file_format = "PNG"
    fmt.color_mode = color_mode
    fmt.color_depth = "8"
    fmt.color_management = "FOLLOW_SCENE"


def is_eevee(engine: str) -> bool:
    return engine in EEVEE_IDS


def set_video_mp4(fmt: Any, ffmpeg: Any) -> None:
    """H.264 in an MP4 through Blender's own FFmpeg (5.0: media_type VIDEO first)."""
    if HAS_MEDIA_TYPE:
        fmt.media_type = "VIDEO"
    fmt.file_format = "FFMPEG"
    ffmpeg.format = "MPEG4"
    ffmpeg.codec = "H264"
    ffmpeg.constant_rate_factor = "HIGH"


def strips(sequence_editor: Any) -> Any:
    """The editor's top-level strips: 5.0 `strips`, 4.5 `sequences` (both in 4.5)."""
    found = getattr(sequence_editor, "strips", None)
    return found if found is not None else sequence_editor.sequences


def add_handlers(pairs: Any) -> None:
    """Appends (handler list name, function) pairs to bpy.app.handlers, dropping any
    earlier copy first (the same function from a reloaded add-on)."""
    for kind, fn in pairs:
        handlers = getattr(bpy.app.handlers, kind)
        remove_handler(handlers, fn)
        handlers.append(fn)


def remove_handlers(pairs: Any) -> None:
    for kind, fn in pairs:
        remove_handler(getattr(bpy.app.handlers, kind), fn)


def remove_handler(handlers: Any, fn: Any) -> None:
    """Removes `fn` and any copy of it (same module and name) from a handler list."""
    for h in list(handlers):
        if h is fn or (
            getattr(h, "__module__", None) == fn.__module__
            and getattr(h, "__name__", None) == fn.__name__
        ):
            handlers.remove(h)


# 5.0 made the compositor a node group of its own (`scene.compositing_node_group`, a Group
# Output instead of the Composite node) and gave File Output `directory` + `file_name` with
# `file_output_items`; 4.5 has `scene.node_tree` (`use_nodes`), `base_path` and
# `layer_slots`. Measured in the 5.0.1 and 4.5.15 wheels.
HAS_NODE_GROUP_COMPOSITOR = hasattr(bpy.types.Scene, "bl_rna") and (
    "compositing_node_group" in bpy.types.Scene.bl_rna.properties
)


def compositor(scene: Any) -> Any | None:
    """The scene's compositor node tree, None when it has none (or, 4.5, nodes are off)."""
    if HAS_NODE_GROUP_COMPOSITOR:
        return scene.compositing_node_group
    return scene.node_tree if scene.use_nodes else None


def new_compositor(scene: Any, name: str) -> Any:
    """A compositor that passes the render through unchanged (Render Layers to the output),
    made the scene's; returns the tree."""
    if HAS_NODE_GROUP_COMPOSITOR:
        tree: Any = bpy.data.node_groups.new(name, "CompositorNodeTree")
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        out = tree.nodes.new("NodeGroupOutput")
        rl = tree.nodes.new("CompositorNodeRLayers")
        tree.links.new(rl.outputs["Image"], out.inputs[0])
        scene.compositing_node_group = tree
        return tree
    scene.use_nodes = True  # 4.5 builds Render Layers -> Composite itself
    return scene.node_tree


def drop_compositor(scene: Any, tree: Any) -> None:
    """Undoes `new_compositor`."""
    if HAS_NODE_GROUP_COMPOSITOR:
        if scene.compositing_node_group == tree:
            scene.compositing_node_group = None
        bpy.data.node_groups.remove(tree)
    else:
        scene.use_nodes = False


# The socket type of each pass's File Output input decides its EXR channel names: values
# `V`, vectors `X Y Z`, colours `R G B A` (genart_core.imaging.passes reads them so).
FILE_OUTPUT_SOCKETS = {"Depth": "FLOAT", "Object Index": "FLOAT", "Normal": "VECTOR"}


def set_file_output(node: Any, directory: str, stem: str, inputs: tuple[str, ...]) -> None:
    """A File Output node writing one multilayer 32-bit float EXR (ZIP, lossless) per
    frame, `<directory><stem><frame:04d>.exr`, with one layer per name in `inputs`."""
    fmt = node.format
    if HAS_MEDIA_TYPE:
        fmt.media_type = "MULTI_LAYER_IMAGE"
    else:
        fmt.file_format = "OPEN_EXR_MULTILAYER"
    fmt.color_depth = "32"
    fmt.exr_codec = "ZIP"
    if hasattr(node, "file_output_items"):  # 5.0+
        node.directory, node.file_name = directory, stem
        items = node.file_output_items
        items.clear()
        for name in inputs:
            items.new(FILE_OUTPUT_SOCKETS.get(name, "RGBA"), name)
    else:  # 4.5
        node.base_path = os.path.join(directory, stem)
        node.layer_slots.clear()
        for name in inputs:
            node.layer_slots.new(name)


def file_output_base(node: Any) -> str:
    """A File Output node's path before the frame number (Blender's `//` kept)."""
    if hasattr(node, "file_output_items"):
        return str(node.directory) + str(node.file_name)
    return str(node.base_path)


def openimageio() -> ModuleType:
    """Blender's bundled OpenImageIO (4.x and 5.x ship it in their Python's site-packages,
    which a real Blender has on sys.path; the `bpy` wheel does not, so it is added here)."""
    try:
        import OpenImageIO
    except ImportError:
        local = bpy.utils.resource_path("LOCAL")
        found = glob.glob(os.path.join(local, "python", "lib", "python3*", "site-packages"))
        for path in found:
            if os.path.isdir(os.path.join(path, "OpenImageIO")) and path not in sys.path:
                sys.path.append(path)
        import OpenImageIO  # noqa: I001 (retry after the path)
    return OpenImageIO


__all__ = [
    "add_handlers",
    "remove_handler",
    "remove_handlers",
    "CYCLES",
    "EEVEE_IDS",
    "HAS_MEDIA_TYPE",
    "WORKBENCH",
    "image_format_attrs",
    "is_eevee",
    "openimageio",
    "set_multilayer_exr",
    "set_png",
    "set_video_mp4",
    "strips",
]
