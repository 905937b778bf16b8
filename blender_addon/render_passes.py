"""The passes that stylize renders needs for coherence: Blender's own render writes them.

Coherent stylization (DESIGN §5) needs each frame's vector, depth and object-index passes
beside its colour. The Stylize animation operator captures them itself; Blender's own
renders (F12, `blender -b -a`, a farm's chunks) cannot: a nested render from a render
handler crashes Blender (measured in the 5.0.1 wheel: a capture in `render_complete`
during an animation render segfaults). So with Stylize renders on and coherence at Exact
flow, the scene's own render writes them: the add-on turns on the view layer's Z, Normal,
Vector and Object Index passes and adds one compositor File Output node, "genart
passes", writing a multilayer EXR per frame to `<Blender's output folder>/genart/passes/`
(the path is set when the node is added and read back from the node, so a farm reads the
same place). If the scene had no compositor, a pass-through one is made (Render Layers to
the output: the picture is unchanged). Turning the toggle or coherence off removes what was
added; the view layer's passes stay on (they change nothing in the picture).

The `sync` below runs from the two properties' update callbacks (main thread; also when a
script sets them), and from the Set up button. Nothing here runs during a render: the
render handlers only read `passes_path`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import bpy

from . import capture, compat

NODE = "genart passes"
RENDER_LAYERS = "genart render layers"  # ours, when the tree had none for the layer
TREE = "genart compositor"
CREATED = "genart_created"  # on a compositor tree the add-on made
INPUTS = {"Depth": "depth", "Normal": "normal", "Vector": "vector", "Object Index": "object_index"}
FOLDER = "passes"


def wanted(scene: Any) -> bool:
    """Stylize renders on with Exact flow coherence."""
    settings = getattr(scene, "genart", None)
    return bool(getattr(settings, "stylize_renders", False)) and (
        getattr(settings, "stylize_renders_coherence", "OFF") == "EXACT_FLOW"
    )


def sync(scene: bpy.types.Scene) -> str:
    """Adds or removes the passes' nodes to match the settings; a line saying what it did
    ("" when nothing changed)."""
    if wanted(scene):
        return ensure(scene)
    return "removed the genart passes node" if remove(scene) else ""


def render_layer(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    """The view layer whose passes are written: the first one that renders."""
    layers = [vl for vl in scene.view_layers if vl.use] or list(scene.view_layers)
    return layers[0]


def _base(scene: bpy.types.Scene) -> tuple[str, str]:
    """(directory, stem) of the passes: `<folder of Blender's frames>/genart/passes/`,
    named like Blender's frames; `//` kept (Blender resolves it against the .blend)."""
    raw = scene.render.filepath or "//"
    head, tail = os.path.split(raw)
    stem = tail.replace("#", "") or "frame_"
    folder = os.path.join(head, "genart", FOLDER) if head else os.path.join("//genart", FOLDER)
    return folder + os.sep, stem


def ensure(scene: bpy.types.Scene) -> str:
    """Turns on the passes and adds (or refreshes) the File Output node; what it did."""
    vl = render_layer(scene)
    for flag in capture.VIEW_LAYER_FLAGS.values():
        if not getattr(vl, flag):
            setattr(vl, flag, True)
    tree = compat.compositor(scene)
    made = tree is None
    if tree is None:
        tree = compat.new_compositor(scene, TREE)
        tree[CREATED] = True
    scene.render.use_compositing = True
    rl = next(
        (
            n
            for n in tree.nodes
            if n.bl_idname == "CompositorNodeRLayers" and getattr(n, "layer", "") == vl.name
        ),
        None,
    )
    if rl is None:
        rl = tree.nodes.new("CompositorNodeRLayers")
        rl.name = rl.label = RENDER_LAYERS
        rl.layer = vl.name
    node = tree.nodes.get(NODE)
    fresh = node is None
    if node is None:
        node = tree.nodes.new("CompositorNodeOutputFile")
        node.name, node.label = NODE, "genart passes (stylize renders)"
        node.location = (rl.location.x + 300, rl.location.y - 300)
    node.mute = False
    directory, stem = _base(scene)
    compat.set_file_output(node, directory, stem, tuple(INPUTS))
    for name in INPUTS:
        source = rl.outputs.get(name) or rl.outputs.get(capture.PASS_ALIASES.get(name, name))
        if source is not None and name in node.inputs:  # 4.5 calls Object Index "IndexOB"
            tree.links.new(source, node.inputs[name])
    where = bpy.path.abspath(directory) if bpy.data.filepath or "//" not in directory else directory
    if made:
        return f"made a compositor that writes the genart passes to {where}"
    return f"{'added' if fresh else 'refreshed'} the genart passes node (writes to {where})"


def remove(scene: bpy.types.Scene) -> bool:
    """Removes what `ensure` added; True when there was something."""
    tree = compat.compositor(scene)
    if tree is None:
        return False
    found = False
    for name in (NODE, RENDER_LAYERS):
        node = tree.nodes.get(name)
        if node is not None:
            tree.nodes.remove(node)
            found = True
    if tree.get(CREATED):  # 4.5 keeps the scene's own tree: the mark must not stay on it
        del tree[CREATED]
        compat.drop_compositor(scene, tree)
        return True
    return found


def passes_path(scene: bpy.types.Scene, frame: int) -> Path | None:
    """Where this render writes frame `frame`'s passes, None without the node (reads only:
    safe on a render thread)."""
    tree = compat.compositor(scene)
    node = tree.nodes.get(NODE) if tree is not None else None
    if node is None or node.mute or not scene.render.use_compositing:
        return None
    base = compat.file_output_base(node)
    runs = list(re.finditer(r"#+", base))
    if runs:  # the last run of '#' is the frame number, as Blender reads it
        r = runs[-1]
        name = f"{base[: r.start()]}{frame:0{len(r.group())}d}{base[r.end() :]}"
    else:
        name = f"{base}{frame:04d}"
    return Path(os.path.abspath(bpy.path.abspath(name + ".exr")))


def beside(stylized: Path) -> Path:
    """Where a stylized frame's passes are kept: `<its folder>/passes/<its name>.exr`
    (the node's own folder when the output path has not changed since it was set up)."""
    return stylized.parent / FOLDER / f"{stylized.stem}.exr"


def move(src: Path, dst: Path) -> None:
    """Moves a written passes file beside its stylized frame (a copy across drives)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        src.unlink(missing_ok=True)


def missing_reason(scene: bpy.types.Scene) -> str:
    """Why the render cannot write usable passes, "" when it can."""
    if scene.render.use_motion_blur:
        return "motion blur is on (the Vector pass needs it off)"
    engine = scene.render.engine
    if "vector" not in capture.ENGINE_PASSES.get(engine, frozenset(capture.DATA_PASSES)):
        name = engine.replace("BLENDER_", "").title()
        return f"{name} writes no Vector pass (use Cycles or EEVEE)"
    return ""


__all__ = [
    "NODE",
    "beside",
    "move",
    "ensure",
    "missing_reason",
    "passes_path",
    "remove",
    "render_layer",
    "sync",
    "wanted",
]
