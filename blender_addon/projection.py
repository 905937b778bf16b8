"""Texture from camera: a generated image projected onto meshes as the capture's camera saw them.

`apply_projection` takes a `Capture` (its camera's matrices), the image generated from it and
the capture's planar depth as a float image, and makes every target object show the image
where, and only where, that camera saw the surface. New data-blocks only:
- a projector: a camera object built from the capture's matrices (not the scene camera), in
  a "genart" collection, locked in place; look through it to see what was captured;
- a node group that computes, per shading point, the projected image colour and a mask;
- per source material a copy whose surface is mixed by that mask with a Principled BSDF
  using the image (unseen parts keep the original look); an empty slot gets a copy of
  Blender's default grey surface. Objects point at the copies through object-linked slots,
  so the meshes' own material lists and every other user of them stay as they were;
- a UV map "genart projection" on each mesh (per-corner projected UVs), for export/baking.

Why the material projects per shading point instead of reading the UV map: a UV map is
interpolated linearly across each triangle, which is not perspective-correct. Measured on
one 10×10 quad seen at a low angle in an 80×60 capture: the UV-map lookup lands up to 16 px
(median 3 px) off and picks up occluder and background pixels at the mask's edges; the
per-point lookup is within 0.15 px (`uv_drift` computes the former for any triangle). It is
also exact on the evaluated (modifier-applied) surface the renderer shades, whatever the
modifiers did, and projecting again over a projection needs no UV map at all.

The mask, per shading point p (in projector space, Texture Coordinate "Object" = projector):
- in front of the projector and facing it (soft falloff at grazing angles);
- its planar depth matches the captured depth at the four texels the colour lookup blends
  (|d - D| ≤ tolerance for each), so a point hidden behind another object or behind its
  own front (self-occlusion: the back of a teapot, the body behind its handle) gets no
  pixels, and no visible point blends in a pixel of its occluder or of the background.
The tolerance grows with depth (relative), with the surface's slope in the view (a texel
spans more depth on a grazing surface) and has a small absolute floor. Measured: with one
depth lookup instead of four, a box behind another picked up its occluder's colour along
the edge (green up to 0.19 where the image had none); with four, 0. The mask is also
written to the Shader AOV "genart_mask" (add that AOV to the view layer to render it).

The depth image is the capture's planar depth as a float Non-Color image, in its red channel
(a grey image does; `images.store_float_image` makes one). Its background may be +inf or
1e10: Cycles reads a non-finite texel as 0 or inf, and either is "no surface here" to the
two-sided test. numpy and bpy only; the caller makes both images.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

import bpy
import numpy as np

from .capture import Capture, ViewSpec, view_camera

UV_MAP = "genart projection"
AOV = "genart_mask"
COLLECTION = "genart"
MAX_UV_MAPS = 8  # Blender's limit per mesh


class ProjectionError(Exception):
    """A projection that cannot be applied; the message says what to change."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SlotChange:
    """A material slot that now points at a copy, and what it held before."""

    object: str
    index: int
    link: str  # "DATA" or "OBJECT": the slot's link before
    material: str | None  # the object-level material before (None: empty)
    copy: str  # the material it shows now


@dataclass(frozen=True)
class ProjectionResult:
    """What `apply_projection` created and changed (names: they survive undo as text)."""

    projector: str  # the camera object
    collection: str
    node_group: str
    image: str
    depth_image: str
    materials: tuple[str, ...]  # the copies (and default surfaces) created
    uv_maps: tuple[str, ...]  # meshes that got (or had rewritten) the UV map
    objects: tuple[str, ...]  # objects whose slots point at the copies
    slots: tuple[SlotChange, ...]
    added_slots: tuple[str, ...] = ()  # meshes that got an empty slot (they had none)
    skipped: tuple[str, ...] = ()  # objects given but not projected onto (notes say why)
    notes: tuple[str, ...] = field(default_factory=tuple)


# -- the projection itself (numpy only) --------------------------------------------------


def normalized_camera(camera_matrix: Sequence[float]) -> np.ndarray:
    """Camera-to-world 4×4 without scale: the view a render uses (Blender normalises it)."""
    m = np.array(camera_matrix, dtype=np.float64).reshape(4, 4)
    out = m.copy()
    out[:3, :3] = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0, keepdims=True)
    return out


def project(
    points: np.ndarray, camera_matrix: Sequence[float], projection: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> image coordinates (N, 2) in [0, 1] (origin bottom-left, as
    UVs and Blender images) and planar depth (N,) along the camera's view axis."""
    to_cam = np.linalg.inv(normalized_camera(camera_matrix))
    p = np.asarray(projection, dtype=np.float64).reshape(4, 4)
    cam = np.c_[points, np.ones(len(points))] @ to_cam.T  # (N, 4)
    clip = cam @ p.T
    w = np.where(np.abs(clip[:, 3]) < 1e-12, 1e-12, clip[:, 3])
    uv = clip[:, :2] / w[:, None] * 0.5 + 0.5
    return uv, -cam[:, 2]


def uv_drift(
    triangle: np.ndarray,
    camera_matrix: Sequence[float],
    projection: Sequence[float],
    size: tuple[int, int],
    samples: int = 64,
) -> float:
    """How far (in image pixels, at most) a UV map's linear interpolation across one world
    triangle (3, 3) lands from the exact projection: the error of a per-corner UV map."""
    a, b = np.meshgrid(np.linspace(0, 1, samples), np.linspace(0, 1, samples))
    keep = a + b <= 1
    bary = np.stack([1 - a[keep] - b[keep], a[keep], b[keep]], axis=1)  # (K, 3)
    corners, _ = project(triangle, camera_matrix, projection)
    exact, _ = project(bary @ triangle, camera_matrix, projection)
    linear = bary @ corners
    return float((np.abs(exact - linear) * np.array(size)).max())


def _tolerances(capture: Capture, depth_size: tuple[int, int]) -> tuple[bool, float]:
    """(perspective, one texel's footprint at depth 1 (perspective) or in scene units)."""
    p = np.array(capture.projection, dtype=np.float64).reshape(4, 4)
    perspective = abs(p[3, 3]) < 0.5
    w, h = depth_size
    return perspective, max(2.0 / (abs(p[0, 0]) * w), 2.0 / (abs(p[1, 1]) * h))


# -- images -------------------------------------------------------------------------------


def _check_images(capture: Capture, image: Any, depth: Any) -> None:
    aspect = capture.width / capture.height
    for label, img in (("image", image), ("depth_image", depth)):
        if not isinstance(img, bpy.types.Image):
            raise ProjectionError(f"{label} must be a bpy.types.Image, got {img!r}", field=label)
        w, h = img.size
        if w == 0 or h == 0:
            raise ProjectionError(f"{label} {img.name!r} has no pixels", field=label)
        if abs(w / h - aspect) > 0.01 * aspect:
            raise ProjectionError(
                f"{label} {img.name!r} is {w}×{h}; the capture is {capture.width}×"
                f"{capture.height}: the aspect must match",
                field=label,
            )
    if not depth.is_float or not depth.colorspace_settings.is_data:
        raise ProjectionError(
            f"depth_image {depth.name!r} must be a float Non-Color image "
            f"(is_float={depth.is_float}, colour space {depth.colorspace_settings.name!r}); "
            "make it with images.store_float_image",
            field="depth_image",
        )
    if image.colorspace_settings.is_data:
        raise ProjectionError(
            f"image {image.name!r} is Non-Color; a generated image is sRGB", field="image"
        )


# -- node building ------------------------------------------------------------------------


class _Tree:
    """Adds nodes to a tree left to right; sockets or constants as inputs."""

    def __init__(self, tree: bpy.types.NodeTree, x: float = 0.0, y: float = 0.0) -> None:
        self.tree, self.x, self.y, self.col = tree, x, y, 0

    def node(self, idname: str, *, column: int | None = None, **props: Any) -> Any:
        n = self.tree.nodes.new(idname)
        for k, v in props.items():
            setattr(n, k, v)
        if column is not None:
            self.col = column
        n.location = (self.x + 200 * self.col, self.y - 40 * (len(self.tree.nodes) % 24))
        return n

    def feed(self, socket: Any, value: Any) -> None:
        if isinstance(value, bpy.types.NodeSocket):
            self.tree.links.new(value, socket)
        else:
            socket.default_value = value

    def math(self, op: str, *args: Any, column: int | None = None) -> Any:
        n = self.node("ShaderNodeMath", operation=op, column=column)
        for i, a in enumerate(args):
            self.feed(n.inputs[i], a)
        return n.outputs[0]

    def vmath(self, op: str, *args: Any, column: int | None = None) -> Any:
        n = self.node("ShaderNodeVectorMath", operation=op, column=column)
        for i, a in enumerate(args):
            self.feed(n.inputs[i], a)
        return n.outputs["Value" if op in ("DOT_PRODUCT", "LENGTH", "DISTANCE") else "Vector"]


def _group(
    name: str,
    projector: bpy.types.Object,
    capture: Capture,
    image: bpy.types.Image,
    depth: bpy.types.Image,
    tolerance: float,
    slope_pixels: float,
    grazing: tuple[float, float],
) -> bpy.types.ShaderNodeTree:
    """The node group: outputs Color (the image at the projected point), Mask (0..1) and
    UV (the projected point in [0, 1]², for anyone who wants more lookups)."""
    g = cast(bpy.types.ShaderNodeTree, bpy.data.node_groups.new(name, "ShaderNodeTree"))
    iface = g.interface
    assert iface is not None
    for sock, kind in (("Color", "NodeSocketColor"), ("Mask", "NodeSocketFloat")):
        iface.new_socket(sock, in_out="OUTPUT", socket_type=kind)
    iface.new_socket("UV", in_out="OUTPUT", socket_type="NodeSocketVector")
    t = _Tree(g)
    p = np.array(capture.projection, dtype=np.float64).reshape(4, 4)
    cam = normalized_camera(capture.camera_matrix)
    perspective, texel = _tolerances(capture, (depth.size[0], depth.size[1]))
    eps = 1e-3 * max(capture.near, 1e-6)  # absolute floor, scene units

    tc = t.node("ShaderNodeTexCoord", object=projector, column=0)
    pos = tc.outputs["Object"]  # projector (camera) space: looks down -Z

    def row(i: int) -> Any:
        return t.math("ADD", t.vmath("DOT_PRODUCT", pos, tuple(p[i, :3]), column=1), p[i, 3])

    w = row(3)
    u = t.math("MULTIPLY_ADD", t.math("DIVIDE", row(0), w, column=2), 0.5, 0.5)
    v = t.math("MULTIPLY_ADD", t.math("DIVIDE", row(1), w, column=2), 0.5, 0.5)
    xyz = t.node("ShaderNodeCombineXYZ", column=3)
    t.feed(xyz.inputs[0], u)
    t.feed(xyz.inputs[1], v)
    uv = xyz.outputs[0]
    d = t.vmath("DOT_PRODUCT", pos, (0.0, 0.0, -1.0), column=1)  # planar depth

    # Facing the projector: the shading normal against the direction to the projector (world).
    geo = t.node("ShaderNodeNewGeometry", column=0)
    if perspective:
        to_proj = t.vmath("SUBTRACT", tuple(cam[:3, 3]), geo.outputs["Position"], column=1)
        view = t.vmath("NORMALIZE", to_proj, column=2)
    else:
        view = tuple(cam[:3, 2])
    cos = t.vmath("DOT_PRODUCT", geo.outputs["Normal"], view, column=3)
    facing = t.node("ShaderNodeMapRange", interpolation_type="SMOOTHSTEP", clamp=True, column=4)
    t.feed(facing.inputs[0], cos)
    t.feed(facing.inputs[1], grazing[0])
    t.feed(facing.inputs[2], grazing[1])
    sin = t.math("SQRT", t.math("SUBTRACT", 1.0, t.math("MULTIPLY", cos, cos)), column=4)
    # Capped where the grazing fade takes over: a larger allowance would only let hidden
    # surfaces at grazing angles through.
    cap = float(np.sqrt(1 - grazing[1] ** 2) / grazing[1])
    tan = t.math("MINIMUM", t.math("DIVIDE", sin, t.math("MAXIMUM", cos, grazing[1])), cap)

    # Tolerance: relative + one texel's depth change on this slope (× slope_pixels) + floor.
    footprint = t.math("MULTIPLY", d, texel, column=5) if perspective else texel
    slope = t.math("MULTIPLY", t.math("MULTIPLY", footprint, tan), slope_pixels)
    tol = t.math("ADD", t.math("MULTIPLY_ADD", d, tolerance, slope), eps)

    # The four texels a bilinear colour lookup at uv blends: all must see this point.
    dw, dh = depth.size
    seen: Any = t.math("GREATER_THAN", d, eps, column=6)  # in front of the projector
    for sx in (-0.5, 0.5):
        for sy in (-0.5, 0.5):
            at = t.vmath("ADD", uv, (sx / dw, sy / dh, 0.0), column=6)
            tex = t.node(
                "ShaderNodeTexImage", image=depth, interpolation="Closest", extension="CLIP"
            )
            t.feed(tex.inputs["Vector"], at)
            red = t.node("ShaderNodeSeparateColor", column=7)
            t.feed(red.inputs[0], tex.outputs["Color"])
            diff = t.math("ABSOLUTE", t.math("SUBTRACT", d, red.outputs[0], column=8))
            seen = t.math("MULTIPLY", seen, t.math("LESS_THAN", diff, tol, column=9))
    mask = t.math("MULTIPLY", seen, facing.outputs[0], column=10)

    colour = t.node("ShaderNodeTexImage", image=image, interpolation="Linear", column=6)
    colour.extension = "EXTEND"
    t.feed(colour.inputs["Vector"], uv)
    out = t.node("NodeGroupOutput", column=11)
    t.feed(out.inputs["Color"], colour.outputs["Color"])
    t.feed(out.inputs["Mask"], mask)
    t.feed(out.inputs["UV"], uv)
    return g


def _node_tree(mat: bpy.types.Material) -> bpy.types.ShaderNodeTree:
    nt = mat.node_tree
    assert nt is not None, mat.name  # the callers made sure it uses nodes
    return nt


def _array(m: Any) -> np.ndarray:
    """A mathutils 4×4 Matrix as a (4, 4) float64 array."""
    return np.array([[m[i][j] for j in range(4)] for i in range(4)], dtype=np.float64)


def _uses_nodes(mat: bpy.types.Material) -> bool:
    """4.5 materials can have their nodes switched off (they render their diffuse colour)
    and new ones start so; 5.0 always uses nodes (the switch remains, deprecated)."""
    if mat.node_tree is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(getattr(mat, "use_nodes", True))


def _diffuse_surface(mat: bpy.types.Material, rgba: tuple[float, ...]) -> None:
    """Replace `mat`'s nodes (ours to change: a new material or a copy) by one diffuse
    BSDF: Cycles' default surface, and what a 4.5 material without nodes renders as."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mat.use_nodes = True
    nt = _node_tree(mat)
    nt.nodes.clear()
    t = _Tree(nt)
    bsdf = t.node("ShaderNodeBsdfDiffuse", column=0)
    bsdf.inputs["Color"].default_value = rgba
    out = t.node("ShaderNodeOutputMaterial", column=1)
    t.feed(out.inputs["Surface"], bsdf.outputs[0])


def _masked_copy(
    source: bpy.types.Material | None, group: bpy.types.ShaderNodeTree, name: str
) -> bpy.types.Material:
    """A copy of `source` (or the default surface) whose surface shows the projection
    where the group's mask says so; the source itself is not touched."""
    if source is None:
        mat = bpy.data.materials.new(f"genart default ({name})")
        _diffuse_surface(mat, (0.8, 0.8, 0.8, 1.0))
    else:
        mat = source.copy()
        mat.name = f"{source.name} (genart {name})"
        if not _uses_nodes(mat):
            _diffuse_surface(mat, tuple(source.diffuse_color))
    nt = _node_tree(mat)
    aovs = [n for n in nt.nodes if n.bl_idname == "ShaderNodeOutputAOV"]
    for n in [n for n in aovs if getattr(n, "aov_name", None) == AOV]:
        nt.nodes.remove(n)  # an earlier projection's mask: this one's takes over
    outputs = [n for n in nt.nodes if n.bl_idname == "ShaderNodeOutputMaterial"]
    if not outputs:
        outputs = [nt.nodes.new("ShaderNodeOutputMaterial")]
    right = max((n.location.x for n in nt.nodes), default=0.0)
    top = max((n.location.y for n in nt.nodes), default=0.0)
    t = _Tree(nt, right + 300, top + 400)
    node = t.node("ShaderNodeGroup", node_tree=group, label="genart projection", column=0)
    bsdf = t.node("ShaderNodeBsdfPrincipled", column=1)
    t.feed(bsdf.inputs["Base Color"], node.outputs["Color"])
    aov = t.node("ShaderNodeOutputAOV", aov_name=AOV, column=2)
    t.feed(aov.inputs["Value"], node.outputs["Mask"])
    for out in outputs:
        surface = out.inputs["Surface"]
        links = surface.links
        original = links[0].from_socket if surface.is_linked and links else None
        mix = t.node("ShaderNodeMixShader", column=2)
        t.feed(mix.inputs[0], node.outputs["Mask"])
        if original is not None:  # unlinked: no surface (black), as before
            t.feed(mix.inputs[1], original)
        t.feed(mix.inputs[2], bsdf.outputs[0])
        t.feed(surface, mix.outputs[0])
    return mat


# -- UVs ----------------------------------------------------------------------------------


def _corner_points(ob: bpy.types.Object, depsgraph: Any) -> tuple[np.ndarray | None, int, str]:
    """World positions of the mesh's corners (loops) from the evaluated geometry when the
    modifiers keep the topology, else from the mesh itself; the evaluated face count;
    and a note (empty when evaluated geometry was used)."""
    me = _mesh(ob)
    ev = ob.evaluated_get(depsgraph)
    em = ev.to_mesh()
    try:
        faces = len(em.polygons)
        same = len(em.loops) == len(me.loops) and faces == len(me.polygons)
        src = em if same else me
        note = (
            ""
            if same
            else f"{ob.name}: its modifiers change the topology, so the UV map {UV_MAP!r} "
            "projects the mesh before them (the material projects the rendered surface "
            "exactly)"
        )
        n = len(src.loops)
        if n == 0:
            return None, faces, note
        co = np.empty(len(src.vertices) * 3, dtype=np.float64)
        src.vertices.foreach_get("co", co)
        vi = np.empty(n, dtype=np.int64)
        src.loops.foreach_get("vertex_index", vi)
        m = _array(ev.matrix_world if same else ob.matrix_world)
        local = co.reshape(-1, 3)[vi]
        return local @ m[:3, :3].T + m[:3, 3], faces, note
    finally:
        ev.to_mesh_clear()


def _write_uvs(me: bpy.types.Mesh, uv: np.ndarray) -> tuple[bool, str]:
    """Put `uv` (corners, 2) in the mesh's "genart projection" map (made if missing)
    without changing which map is active or renders. (written, note)."""
    layers = me.uv_layers
    active = layers.active_index
    render = next((i for i, lay in enumerate(layers) if lay.active_render), None)
    layer = layers.get(UV_MAP)
    note = ""
    if layer is not None:
        note = f"{me.name}: its UV map {UV_MAP!r} was rewritten by this projection"
    else:
        if len(layers) >= MAX_UV_MAPS:
            return False, f"{me.name} has {MAX_UV_MAPS} UV maps, Blender's limit: no {UV_MAP!r}"
        layer = layers.new(name=UV_MAP, do_init=False)
        if layer is None:
            return False, f"{me.name}: Blender refused a new UV map"
    layer.data.foreach_set("uv", np.asarray(uv, dtype=np.float32).reshape(-1))
    if render is not None and not layers[render].active_render:
        layers[render].active_render = True
    if active is not None and active >= 0 and layers.active_index != active:
        layers.active_index = active
    me.update()
    return True, note


# -- the edge -----------------------------------------------------------------------------


def _depsgraph(scene: bpy.types.Scene, view_layer: str) -> Any:
    vl = scene.view_layers.get(view_layer) or scene.view_layers[0]
    if bpy.context.scene == scene and bpy.context.view_layer == vl:
        return bpy.context.evaluated_depsgraph_get()
    dg = vl.depsgraph
    assert dg is not None
    dg.update()
    return dg


def _collection(scene: bpy.types.Scene, undo: list[Callable[[], Any]]) -> bpy.types.Collection:
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None or coll.library is not None:
        coll = bpy.data.collections.new(COLLECTION)
        undo.append(partial(bpy.data.collections.remove, coll))
    if scene.collection.children.get(coll.name) is None:
        scene.collection.children.link(coll)
        undo.append(partial(scene.collection.children.unlink, coll))
    return coll


def _mesh(ob: bpy.types.Object) -> bpy.types.Mesh:
    me = ob.data
    assert isinstance(me, bpy.types.Mesh), ob.name  # only meshes get this far
    return me


def _projector(
    scene: bpy.types.Scene, capture: Capture, name: str, coll: bpy.types.Collection
) -> bpy.types.Object:
    """The capture's camera as an object: view it through to see what was captured."""
    view = ViewSpec(
        matrix_world=tuple(normalized_camera(capture.camera_matrix).reshape(-1)),
        projection=tuple(capture.projection),
        width=capture.width,
        height=capture.height,
    )
    ob = view_camera(scene, view)
    scene.collection.objects.unlink(ob)
    coll.objects.link(ob)
    data = ob.data
    assert isinstance(data, bpy.types.Camera)
    ob.name = data.name = f"genart projector {name}"
    ob.hide_render = True
    ob.lock_location = ob.lock_rotation = ob.lock_scale = (True, True, True)
    ob["genart_projection"] = {
        "capture_camera_matrix": list(capture.camera_matrix),
        "capture_projection": list(capture.projection),
        "size": [capture.width, capture.height],
        "frame": capture.frame,
    }
    return ob


def _skip_reason(ob: Any) -> str | None:
    if not isinstance(ob, bpy.types.Object):
        return f"{ob!r} is not an object"
    if ob.library is not None:
        return (
            f"{ob.name} is linked from the library {ob.library.filepath!r}: make it local "
            "(Object > Relations > Make Local) or add a library override, then project again"
        )
    if not getattr(ob, "is_editable", True):
        return f"{ob.name} cannot be edited (a system library override): make it editable first"
    if ob.type != "MESH":
        return f"{ob.name} is a {ob.type.lower()}, not a mesh: convert it to a mesh first"
    if ob.mode == "EDIT":
        return f"{ob.name} is in Edit Mode: switch to Object Mode, then project again"
    return None


def _linked(data: Any) -> bool:
    """Data another file owns (linked, or an override whose data cannot take new layers)."""
    return data.library is not None or data.override_library is not None


def apply_projection(
    scene: bpy.types.Scene,
    objects: Iterable[bpy.types.Object],
    capture: Capture,
    image: bpy.types.Image,
    depth_image: bpy.types.Image,
    *,
    name: str,
    tolerance: float = 0.005,
    slope_pixels: float = 2.0,
    grazing: tuple[float, float] = (0.05, 0.25),
) -> ProjectionResult:
    """Project `image` (the generated image, sRGB, the capture's aspect) onto the meshes in
    `objects` as the capture's camera saw them; see the module for what is created.

    `depth_image` holds the capture's planar depth in its red channel (see the module).
    `tolerance` is the relative depth tolerance, `slope_pixels` how many texels of depth
    change a grazing surface may differ by, `grazing` the cosines (to the projector) over
    which the projection fades in. Objects that cannot take it are skipped with a note;
    none at all raises `ProjectionError`. On failure nothing is left half-made.
    """
    if not name or not name.strip():
        raise ProjectionError("a projection needs a name", field="name")
    if not (0 <= tolerance < 1) or slope_pixels < 0 or not (0 <= grazing[0] < grazing[1] <= 1):
        raise ProjectionError(
            f"tolerance {tolerance} must be in [0, 1), slope_pixels {slope_pixels} ≥ 0, "
            f"grazing {grazing} two cosines 0 ≤ a < b ≤ 1",
            field="tolerance",
        )
    _check_images(capture, image, depth_image)
    notes: list[str] = []
    given = list(dict.fromkeys(objects))  # once each, in order
    targets: list[bpy.types.Object] = []
    for ob in given:
        reason = _skip_reason(ob)
        if reason:
            notes.append(reason)
        else:
            targets.append(ob)
    if scene.frame_current != capture.frame:
        notes.append(
            f"the capture is of frame {capture.frame}, the scene is at {scene.frame_current}: "
            "geometry that moved since is projected where it is now"
        )

    dg = _depsgraph(scene, capture.view_layer)
    corners: dict[str, tuple[np.ndarray | None, str]] = {}  # by mesh (name_full)
    usable = []
    for ob in targets:
        points, faces, note = _corner_points(ob, dg)
        if faces == 0:
            notes.append(f"{ob.name} has no faces to project onto")
            continue
        if len(ob.material_slots) == 0 and _linked(_mesh(ob)):
            notes.append(
                f"{ob.name}: its mesh is linked from a library and has no material slot: "
                "make the mesh local (Object > Relations > Make Local > Object and Data)"
            )
            continue
        usable.append(ob)
        corners.setdefault(_mesh(ob).name_full, (points, note))
    skipped = tuple(getattr(ob, "name", repr(ob)) for ob in given if ob not in usable)
    if not usable:
        raise ProjectionError(
            "nothing to project onto: " + ("; ".join(notes) or "no objects given"),
            field="objects",
        )

    undo: list[Callable[[], Any]] = []
    try:
        result = _apply(
            scene,
            usable,
            capture,
            image,
            depth_image,
            name,
            (tolerance, slope_pixels, grazing),
            corners,
            notes,
            undo,
        )
    except BaseException:
        for fn in reversed(undo):
            try:
                fn()
            except (ReferenceError, RuntimeError, KeyError) as exc:
                print(f"genart: projection could not undo a step: {exc}")
        raise
    return replace(result, skipped=skipped)


def _put_back(slot: Any, material: bpy.types.Material | None, link: str) -> None:
    slot.material = material  # while linked to the object: its object-level material
    slot.link = link


def _pop_slot(me: bpy.types.Mesh) -> None:
    me.materials.pop(index=len(me.materials) - 1)


def _drop_uv_map(me: bpy.types.Mesh) -> None:
    me.uv_layers.remove(me.uv_layers[UV_MAP])


def _apply(
    scene: bpy.types.Scene,
    targets: list[bpy.types.Object],
    capture: Capture,
    image: bpy.types.Image,
    depth: bpy.types.Image,
    name: str,
    knobs: tuple[float, float, tuple[float, float]],
    corners: dict[str, tuple[np.ndarray | None, str]],
    notes: list[str],
    undo: list[Callable[[], Any]],
) -> ProjectionResult:
    coll = _collection(scene, undo)
    projector = _projector(scene, capture, name, coll)
    undo.append(partial(bpy.data.cameras.remove, cast(bpy.types.Camera, projector.data)))
    undo.append(partial(bpy.data.objects.remove, projector))
    group = _group(f"genart projection {name}", projector, capture, image, depth, *knobs)
    undo.append(partial(bpy.data.node_groups.remove, group))

    copies: dict[str | None, bpy.types.Material] = {}
    slots: list[SlotChange] = []
    added: list[str] = []
    for ob in targets:
        me = _mesh(ob)
        if len(ob.material_slots) == 0:
            me.materials.append(None)
            undo.append(partial(_pop_slot, me))
            added.append(me.name)
        for i, slot in enumerate(ob.material_slots):
            key = slot.material.name_full if slot.material is not None else None
            if key not in copies:
                copies[key] = _masked_copy(slot.material, group, name)
                undo.append(partial(bpy.data.materials.remove, copies[key]))
            link = slot.link
            slot.link = "OBJECT"
            before = slot.material  # the object-level one (usually empty)
            slot.material = copies[key]
            undo.append(partial(_put_back, slot, before, link))
            slots.append(
                SlotChange(ob.name, i, link, before.name if before else None, copies[key].name)
            )

    uv_meshes: list[str] = []
    for ob in targets:
        me = _mesh(ob)
        if me.name_full not in corners:  # once per mesh
            continue
        points, note = corners.pop(me.name_full)
        if _linked(me):
            notes.append(
                f"{ob.name}: its mesh {me.name} is linked from a library, so it gets no UV map "
                f"{UV_MAP!r} (the material projects all the same)"
            )
            continue
        if points is None:
            continue
        if note:
            notes.append(note)
        users = [o.name for o in targets if o.data == me]
        if len(users) > 1:
            notes.append(
                f"{', '.join(users)} share the mesh {me.name}: its UV map follows {ob.name}"
            )
        uv, _ = project(points, capture.camera_matrix, capture.projection)
        had = me.uv_layers.get(UV_MAP) is not None
        ok, uv_note = _write_uvs(me, uv)
        if ok and not had:
            undo.append(partial(_drop_uv_map, me))
        if uv_note:
            notes.append(uv_note)
        if ok:
            uv_meshes.append(me.name)
    return ProjectionResult(
        projector=projector.name,
        collection=coll.name,
        node_group=group.name,
        image=image.name,
        depth_image=depth.name,
        materials=tuple(m.name for m in copies.values()),
        uv_maps=tuple(uv_meshes),
        objects=tuple(o.name for o in targets),
        slots=tuple(slots),
        added_slots=tuple(added),
        notes=tuple(notes),
    )


__all__ = [
    "AOV",
    "UV_MAP",
    "ProjectionError",
    "ProjectionResult",
    "SlotChange",
    "apply_projection",
    "normalized_camera",
    "project",
    "uv_drift",
]
