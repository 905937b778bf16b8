"""Tileable textures: a generated seamless image as a new material on the selected objects.

`apply_tileable` makes one material "genart <name>" (Image Texture with extension REPEAT
into a Principled BSDF's Base Color) and puts it in every material slot of the objects:
- "BOX": box projection from object coordinates (object space, so the texture moves and
  scales with the object), blended where the sides meet; `scale` repeats per unit.
- "UV": each object's active render UV map (the Texture Coordinate node's UV output, so
  one material serves objects whose maps have different names); `scale` repeats per UV
  unit. Objects without a UV map (the teapot) get a second material, "genart <name>
  (box)", box-projected, and a note. UV maps spanning UDIM tiles (coordinates beyond
  0..1) are reported in the notes with their tile numbers (1001 + u + 10 v): the texture
  repeats in every tile.

The slots are switched to link 'OBJECT' and given the new material: the mesh keeps its
own material list, so the user's materials keep their users and stay in the file (no fake
user needed, so nothing on them changes), objects sharing the mesh keep their look, and
switching a slot back to 'Data' restores the original. A user material that was linked by
the object itself (it would lose that user and could be dropped on save) is kept through
an ID custom property on the new material (`REPLACED`). An object with no slot at all gets
one empty slot on its mesh (the one change to user data, said in the notes). Linked
library objects are refused before anything changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

import bpy
import numpy as np

from . import MARK, ApplyError

MAPPINGS = ("BOX", "UV")
SURFACES = frozenset({"MESH", "CURVE", "SURFACE", "META", "FONT"})  # types with material slots
BOX_BLEND = 0.25  # share of the box projection's side transitions that blend
REPLACED = "genart_replaced_materials"  # ID property group on our material
UDIM_FIRST = 1001
UDIM_COLUMNS = 10


@dataclass(frozen=True)
class TileableResult:
    """What `apply_tileable` did: the materials it made, the objects whose slots now use
    them, and notes for the user (fallbacks, UDIM layouts, skipped objects)."""

    materials: tuple[bpy.types.Material, ...]
    objects: tuple[bpy.types.Object, ...]
    notes: tuple[str, ...]


def udim_tiles(uv: np.ndarray, loop_start: np.ndarray) -> tuple[list[int], int]:
    """UDIM tile numbers of the faces, from each face's UV centroid (so a face lying on a
    tile border counts once): sorted tiles and the number of faces outside the UDIM range
    (u < 0, u ≥ 10 or v < 0). `uv` is (loops, 2), `loop_start` each face's first loop."""
    if len(loop_start) == 0:
        return [], 0
    counts = np.diff(np.append(loop_start, len(uv)))
    centre = np.add.reduceat(uv.astype(np.float64), loop_start, axis=0) / counts[:, None]
    cell = np.floor(centre).astype(np.int64)  # (faces, 2)
    inside = (cell[:, 0] >= 0) & (cell[:, 0] < UDIM_COLUMNS) & (cell[:, 1] >= 0)
    tiles = UDIM_FIRST + cell[inside, 0] + UDIM_COLUMNS * cell[inside, 1]
    return sorted(int(t) for t in np.unique(tiles)), int((~inside).sum())


def _render_uv(obj: bpy.types.Object, depsgraph: Any) -> tuple[str, np.ndarray, np.ndarray] | None:
    """Name, loop UVs (loops, 2) and face loop starts of the object's active render UV map,
    on the evaluated (modifier-applied) mesh; None when it has none."""
    if obj.type != "MESH":
        return None
    mesh = obj.evaluated_get(depsgraph).data if depsgraph is not None else obj.data
    assert isinstance(mesh, bpy.types.Mesh)  # obj.type == "MESH", checked above
    layer = next((layer for layer in mesh.uv_layers if layer.active_render), None)
    if layer is None:
        return None
    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    layer.uv.foreach_get("vector", uv)
    starts = np.empty(len(mesh.polygons), dtype=np.int64)
    mesh.polygons.foreach_get("loop_start", starts)
    return layer.name, uv.reshape(-1, 2), starts


def _material(image: bpy.types.Image, title: str, mapping: str, scale: float) -> bpy.types.Material:
    material = bpy.data.materials.new(title)
    if material.node_tree is None:  # 4.5 creates materials without nodes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            material.use_nodes = True
    tree = material.node_tree
    assert tree is not None  # switching nodes on made it
    tree.nodes.clear()
    coords = tree.nodes.new("ShaderNodeTexCoord")
    coords.location = (-900, 0)
    place = tree.nodes.new("ShaderNodeMapping")
    place.location = (-700, 0)
    cast(bpy.types.NodeSocketVectorXYZ, place.inputs["Scale"]).default_value = (scale, scale, scale)
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.location = (-450, 0)
    texture = cast(bpy.types.ShaderNodeTexImage, tex)  # what that idname makes
    texture.image = image
    texture.extension = "REPEAT"
    if mapping == "BOX":
        texture.projection = "BOX"
        texture.projection_blend = BOX_BLEND
        tree.links.new(coords.outputs["Object"], place.inputs["Vector"])
    else:  # the UV output is the active render map of whichever object is shaded
        tree.links.new(coords.outputs["UV"], place.inputs["Vector"])
    tree.links.new(place.outputs["Vector"], tex.inputs["Vector"])
    shader = tree.nodes.new("ShaderNodeBsdfPrincipled")
    shader.location = (-150, 0)
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    output.location = (200, 0)
    tree.links.new(tex.outputs["Color"], shader.inputs["Base Color"])
    tree.links.new(shader.outputs["BSDF"], output.inputs["Surface"])
    material[MARK] = "tileable"
    return material


def _check(image: object, mapping: str, scale: float) -> None:
    if not isinstance(image, bpy.types.Image):
        raise ApplyError(f"expected a bpy.types.Image, got {type(image).__name__}", "image")
    if 0 in tuple(image.size):
        raise ApplyError(
            f"image '{image.name}' has no pixels (file missing or not loaded): "
            "generate it again or reload it",
            "image",
        )
    if mapping not in MAPPINGS:
        raise ApplyError(f"mapping must be one of {MAPPINGS}, not {mapping!r}", "mapping")
    if not (math.isfinite(scale) and scale > 0):
        raise ApplyError(f"scale must be a positive number of repeats, not {scale}", "scale")


def _refuse_linked(obj: bpy.types.Object) -> None:
    if obj.library is not None:
        raise ApplyError(
            f"object '{obj.name}' is linked from {obj.library.filepath}: make it local or "
            "a library override before texturing it",
            "objects",
        )
    if len(obj.material_slots) == 0 and obj.data.library is not None:
        raise ApplyError(
            f"object '{obj.name}' has no material slot and its data is linked from "
            f"{obj.data.library.filepath}: make the data local or add a slot in the library",
            "objects",
        )


def apply_tileable(
    objects: Iterable[bpy.types.Object],
    image: bpy.types.Image,
    *,
    name: str,
    mapping: Literal["BOX", "UV"],
    scale: float = 1.0,
    depsgraph: Any = None,
) -> TileableResult:
    """Put the seamless `image` on `objects` as a new material (see the module docstring).

    `depsgraph` is the evaluated dependency graph to read UV maps from (default: the
    context's). Everything is checked before anything changes; objects that cannot hold a
    material (lights, cameras, empties) are skipped with a note.
    """
    _check(image, mapping, scale)
    chosen = list(dict.fromkeys(objects))  # selection order, once each
    if depsgraph is None and mapping == "UV":
        depsgraph = bpy.context.evaluated_depsgraph_get()
    notes: list[str] = []
    plan: list[tuple[bpy.types.Object, Literal["BOX", "UV"]]] = []
    for obj in chosen:
        if obj.type not in SURFACES:
            notes.append(f"{obj.name}: a {obj.type.lower()} holds no material, left alone")
            continue
        _refuse_linked(obj)
        mode = mapping
        if mapping == "UV":
            found = _render_uv(obj, depsgraph)
            if found is None:
                mode = "BOX"
                notes.append(f"{obj.name}: no UV map, box-projected instead")
            else:
                layer, uv, starts = found
                tiles, outside = udim_tiles(uv, starts)
                if (tiles and tiles != [UDIM_FIRST]) or outside:
                    listed = ", ".join(str(t) for t in tiles)
                    note = f"{obj.name}: UV map '{layer}' spans UDIM tiles {listed}"
                    if outside:
                        note += f" and {outside} faces outside the UDIM range (u<0, u≥10 or v<0)"
                    notes.append(note + "; the tileable texture repeats in every tile")
        plan.append((obj, mode))
    if not plan:
        raise ApplyError(
            "none of the selected objects can hold a material: select meshes, curves or text",
            "objects",
        )

    title = f"genart {name}"
    materials: dict[str, bpy.types.Material] = {}
    for mode in sorted({mode for _, mode in plan}, key=lambda m: m != mapping):
        suffix = "" if mode == mapping else f" ({mode.lower()})"
        materials[mode] = _material(image, title + suffix, mode, scale)
    for obj, mode in plan:
        material = materials[mode]
        if len(obj.material_slots) == 0:
            data = obj.data
            # The SURFACES types: meshes, metaballs and curves (surfaces and text included).
            assert isinstance(data, (bpy.types.Mesh, bpy.types.Curve, bpy.types.MetaBall))
            data.materials.append(None)
            notes.append(f"{obj.name}: had no material slot; one empty slot added to its data")
        for index, slot in enumerate(obj.material_slots):
            old = slot.material if slot.link == "OBJECT" else None
            if old is not None and old.get(MARK) is None:  # the user's, on this object only
                kept = material.get(REPLACED)
                if kept is None:
                    material[REPLACED] = {}
                    kept = material[REPLACED]
                kept[f"{obj.name}[{index}]"] = old  # user-counted: survives saving
            slot.link = "OBJECT"
            slot.material = material
    return TileableResult(
        materials=tuple(materials.values()),
        objects=tuple(obj for obj, _ in plan),
        notes=tuple(notes),
    )


__all__ = ["MAPPINGS", "REPLACED", "TileableResult", "apply_tileable", "udim_tiles"]
