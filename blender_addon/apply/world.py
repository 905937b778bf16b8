"""Backgrounds: a generated 360° panorama as a new World, or a picture on a camera backdrop.

`apply_panorama` makes a **new** World named "genart <name>" and switches the scene to
it; the user's World is not edited. A World nobody uses is dropped when the file is saved,
so the new World keeps the one it replaced alive through an ID custom property
(`PREVIOUS`, user-counted like any ID pointer) instead of a fake user on the user's World:
their World stays bit for bit as it was (fake-user flag included), it survives saving for
as long as the genart World exists, and an operator can switch back to it. Applying again
over a genart World points the newer one at the same user World, so earlier generations
fall away on save like any other unused data-block.

With `camera_only` the panorama is what camera rays see, and everything else (diffuse,
glossy, shadow rays: the lighting) still sees the previous World: its node tree is copied
into the new World and mixed with Light Path "Is Camera Ray". With no previous World the
lighting is a Background of Blender's default World colour.

`apply_backdrop` adds a plane parented to the camera that fills its frame exactly (sensor
fit, shift, aspect and orthographic cameras included, at the current lens: animating the
lens or the resolution afterwards does not move it), with an emission-only material and
ray visibility for camera rays only: it renders (a camera's background images do not),
casts no shadow, lights nothing and shows in no reflection. Emission shows the picture as
is under the Standard view transform; AgX and Filmic tone-map it like anything else.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, cast

import bpy

from . import MARK, ApplyError

PREVIOUS = "genart_previous_world"  # ID property on our World: the user's World it replaced
PANORAMA_ASPECT = 2.0
ASPECT_TOLERANCE = 0.01  # relative; a 2:1 image that lost a pixel to rounding still passes
BACKDROP_MARGIN = 0.01  # default distance: this fraction inside the camera's clip end
NODE = "genart "  # prefix of the nodes this module adds to a World's tree
MIX = NODE + "camera mix"
# get_output_node targets; "ALL" outputs match both
LIGHTING_TARGETS: tuple[Literal["CYCLES", "EEVEE"], ...] = ("CYCLES", "EEVEE")
SHADOWLESS = (  # Object ray visibility this module turns off for a backdrop
    "visible_diffuse",
    "visible_glossy",
    "visible_transmission",
    "visible_volume_scatter",
    "visible_shadow",
)
NO_PROBES = ("hide_probe_volume", "hide_probe_sphere", "hide_probe_plane")  # EEVEE


def _check_image(image: object, field: str = "image") -> bpy.types.Image:
    if not isinstance(image, bpy.types.Image):
        raise ApplyError(f"expected a bpy.types.Image, got {type(image).__name__}", field)
    width, height = image.size
    if width == 0 or height == 0:
        raise ApplyError(
            f"image '{image.name}' has no pixels (file missing or not loaded): "
            "generate it again or reload it",
            field,
        )
    return image


def _uses_nodes(world: bpy.types.World) -> bool:
    """Whether the World renders from its node tree (4.5 can switch nodes off; 5.0
    deprecates the switch and always uses them)."""
    if world.node_tree is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(world.use_nodes)


def _node_tree(world: bpy.types.World) -> bpy.types.ShaderNodeTree:
    tree = world.node_tree
    assert tree is not None, world.name  # the callers made sure it uses nodes
    return tree


def _fresh_tree(world: bpy.types.World) -> bpy.types.ShaderNodeTree:
    """The World's node tree, switched on and emptied (4.5 creates Worlds without one)."""
    if not _uses_nodes(world):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            world.use_nodes = True
    tree = _node_tree(world)  # switching nodes on made it
    tree.nodes.clear()
    return tree


def _node(
    tree: bpy.types.ShaderNodeTree, kind: str, name: str, x: float, y: float
) -> bpy.types.Node:
    node = tree.nodes.new(kind)
    node.name = node.label = NODE + name
    node.location = (x, y)
    return node


def _colour(background: bpy.types.Node) -> bpy.types.bpy_prop_array[float]:
    """A Background node's Color input value (RGBA)."""
    return cast(bpy.types.NodeSocketColor, background.inputs["Color"]).default_value


def _panorama_nodes(
    tree: bpy.types.ShaderNodeTree, image: bpy.types.Image, x: float, y: float
) -> bpy.types.NodeSocket:
    """Environment Texture (equirectangular) -> Background; returns the Background output."""
    tex = _node(tree, "ShaderNodeTexEnvironment", "panorama", x - 300, y)
    env = cast(bpy.types.ShaderNodeTexEnvironment, tex)  # what that idname makes
    env.image = image
    env.projection = "EQUIRECTANGULAR"
    background = _node(tree, "ShaderNodeBackground", "background", x, y)
    tree.links.new(tex.outputs["Color"], background.inputs["Color"])
    return background.outputs["Background"]


def _user_world(world: bpy.types.World | None) -> bpy.types.World | None:
    """The World the user made: `world` itself, or the one a genart World replaced."""
    if world is not None and world.get(MARK) == "panorama":
        return world.get(PREVIOUS)
    return world


def _lighting_outputs(tree: bpy.types.ShaderNodeTree) -> list[bpy.types.Node]:
    """The World Output nodes the render engines use (one each at most, often the same)."""
    found: list[bpy.types.Node] = []
    for target in LIGHTING_TARGETS:
        node = tree.get_output_node(target)
        if node is not None and node not in found:
            found.append(node)
    return found


def _surface_source(
    tree: bpy.types.ShaderNodeTree, output: bpy.types.Node
) -> bpy.types.NodeSocket | None:
    """What feeds the output's Surface, looking through a camera mix this module added
    earlier (its lighting input), so applying twice does not stack mixes."""
    links = output.inputs["Surface"].links
    if not links:
        return None
    source = links[0].from_socket
    # A link always joins sockets of two nodes; the stubs type both Optional.
    assert source is not None and source.node is not None
    if source.node.name.startswith(MIX):
        lighting = source.node.inputs[1].links
        return lighting[0].from_socket if lighting else None
    return source


def _upstream(sockets: list[bpy.types.NodeSocket | None]) -> set[str]:
    """Names of the nodes whose outputs reach `sockets` (their own nodes included)."""
    seen: set[str] = set()
    todo = [s.node for s in sockets if s is not None]
    while todo:
        node = todo.pop()
        # Sockets and links always belong to nodes, and a socket always has its (maybe
        # empty) links; the stubs type all three Optional.
        assert node is not None
        if node.name not in seen:
            seen.add(node.name)
            todo.extend(link.from_node for i in node.inputs for link in i.links or ())
    return seen


def _camera_only_world(
    previous: bpy.types.World | None, image: bpy.types.Image, name: str
) -> bpy.types.World:
    """A copy of `previous` (its lighting, volume and settings) whose Surface shows the
    panorama to camera rays only."""
    if previous is None:
        world = bpy.data.worlds.new(name)
        tree = _fresh_tree(world)
        grey = _node(tree, "ShaderNodeBackground", "default lighting", -300, 0)
        _colour(grey)[:3] = world.color[:]  # the new World's default
        output = tree.nodes.new("ShaderNodeOutputWorld")
        sources: dict[bpy.types.Node, bpy.types.NodeSocket | None] = {
            output: grey.outputs["Background"]
        }
    elif not _uses_nodes(previous):  # 4.5: a World with nodes off lights with its colour
        world = previous.copy()
        world.name = name
        tree = _fresh_tree(world)
        flat = _node(tree, "ShaderNodeBackground", "world colour", -300, 0)
        _colour(flat)[:3] = previous.color[:]
        output = tree.nodes.new("ShaderNodeOutputWorld")
        sources = {output: flat.outputs["Background"]}
    else:
        world = previous.copy()  # copies the embedded node tree; node groups stay shared
        world.name = name
        tree = _node_tree(world)
        outputs = _lighting_outputs(tree) or [tree.nodes.new("ShaderNodeOutputWorld")]
        sources = {out: _surface_source(tree, out) for out in outputs}
        upstream = _upstream(list(sources.values()))  # may hold an earlier panorama's nodes
        for node in [n for n in tree.nodes if n.name.startswith(NODE)]:
            if node.name not in upstream:
                tree.nodes.remove(node)  # an earlier camera mix and what only it used
    left = min((n.location.x for n in tree.nodes), default=0.0)
    bottom = min((n.location.y for n in tree.nodes), default=0.0)
    panorama = _panorama_nodes(tree, image, left - 200, bottom - 300)
    ray = _node(tree, "ShaderNodeLightPath", "camera ray", left - 200, bottom + 100)
    for i, (output, lighting) in enumerate(sources.items()):
        suffix = f" {i}" if i else ""
        x, y = output.location.x, output.location.y
        mix = _node(tree, "ShaderNodeMixShader", "camera mix" + suffix, x - 200, y)
        tree.links.new(ray.outputs["Is Camera Ray"], mix.inputs[0])  # "Fac"; 5.0: "Factor"
        if lighting is not None:
            tree.links.new(lighting, mix.inputs[1])
        tree.links.new(panorama, mix.inputs[2])
        tree.links.new(mix.outputs["Shader"], output.inputs["Surface"])
    return world


def apply_panorama(
    scene: bpy.types.Scene, image: bpy.types.Image, *, camera_only: bool, name: str
) -> bpy.types.World:
    """Make a new World "genart <name>" showing the 2:1 equirectangular `image` as the
    environment and make it the scene's World; returns it. See the module docstring."""
    image = _check_image(image)
    width, height = image.size
    if abs(width / height - PANORAMA_ASPECT) > ASPECT_TOLERANCE * PANORAMA_ASPECT:
        raise ApplyError(
            f"a panorama must be 2:1 (equirectangular); image '{image.name}' is "
            f"{width}×{height}: generate it at {2 * height}×{height} or {width}×{width // 2}",
            "image",
        )
    previous = scene.world
    title = f"genart {name}"
    if camera_only:
        world = _camera_only_world(previous, image, title)
    else:
        world = bpy.data.worlds.new(title)
        tree = _fresh_tree(world)
        output = tree.nodes.new("ShaderNodeOutputWorld")
        output.location = (300, 0)
        tree.links.new(_panorama_nodes(tree, image, 0, 0), output.inputs["Surface"])
    world[MARK] = "panorama"
    user_world = _user_world(previous)
    if user_world is not None:
        world[PREVIOUS] = user_world
    else:  # drop one copied from a genart World that had none
        world.pop(PREVIOUS, None)
    scene.world = world
    return world


def _frame_corners(
    scene: bpy.types.Scene, camera: bpy.types.Object, distance: float
) -> list[tuple[float, float, float]]:
    """The camera frame's corners at planar depth `distance`, in camera space (top right,
    bottom right, bottom left, top left, as `Camera.view_frame` gives them)."""
    data = camera.data
    assert isinstance(data, bpy.types.Camera)  # apply_backdrop checked camera.type
    corners = data.view_frame(scene=scene)  # sensor fit, shift, aspect applied
    if data.type == "ORTHO":
        return [(c.x, c.y, -distance) for c in corners]
    return [(c.x * distance / -c.z, c.y * distance / -c.z, -distance) for c in corners]


def _backdrop_material(image: bpy.types.Image, title: str) -> bpy.types.Material:
    material = bpy.data.materials.new(title)
    if material.node_tree is None:  # 4.5 creates materials without nodes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            material.use_nodes = True
    tree = material.node_tree
    assert tree is not None  # switching nodes on made it
    tree.nodes.clear()
    tex = tree.nodes.new("ShaderNodeTexImage")
    texture = cast(bpy.types.ShaderNodeTexImage, tex)  # what that idname makes
    texture.image = image
    texture.extension = "EXTEND"  # the frame's edges show the picture's edges, not the far side
    tex.location = (-300, 0)
    emission = tree.nodes.new("ShaderNodeEmission")
    cast(bpy.types.NodeSocketFloat, emission.inputs["Strength"]).default_value = 1.0
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    output.location = (200, 0)
    tree.links.new(tex.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    material[MARK] = "backdrop"
    return material


def apply_backdrop(
    scene: bpy.types.Scene,
    camera: bpy.types.Object,
    image: bpy.types.Image,
    *,
    name: str,
    distance: float | None = None,
) -> bpy.types.Object:
    """Add a plane "genart <name>" parented to `camera` that exactly fills its frame at
    planar depth `distance` (default: 1 % inside the clip end), showing `image` unlit to
    camera rays only; returns the new object. The image is stretched to the frame."""
    if not isinstance(camera, bpy.types.Object) or camera.type != "CAMERA":
        raise ApplyError("a backdrop needs a camera object: set the scene's camera", "camera")
    data = camera.data
    assert isinstance(data, bpy.types.Camera)  # camera.type == "CAMERA", checked above
    if data.type not in ("PERSP", "ORTHO"):
        raise ApplyError(
            f"camera '{camera.name}' is {data.type}: a backdrop needs a perspective or "
            "orthographic camera; for a panoramic camera apply the picture as a World",
            "camera",
        )
    image = _check_image(image)
    if distance is None:
        distance = data.clip_end * (1.0 - BACKDROP_MARGIN)
    if not (math.isfinite(distance) and data.clip_start < distance < data.clip_end):
        raise ApplyError(
            f"backdrop distance {distance} is outside camera '{camera.name}''s clip range "
            f"({data.clip_start}, {data.clip_end}): choose a distance inside it",
            "distance",
        )
    title = f"genart {name}"
    mesh = bpy.data.meshes.new(title)
    mesh.from_pydata(_frame_corners(scene, camera, distance), [], [(2, 1, 0, 3)])  # faces it
    uv = mesh.uv_layers.new(name="UVMap")
    corner_uv = {0: (1.0, 1.0), 1: (1.0, 0.0), 2: (0.0, 0.0), 3: (0.0, 1.0)}
    for loop in mesh.loops:
        uv.uv[loop.index].vector = corner_uv[loop.vertex_index]
    mesh.materials.append(_backdrop_material(image, title))

    plane = bpy.data.objects.new(title, mesh)
    scene.collection.objects.link(plane)
    plane.parent = camera
    # The view ignores the camera's scale and so do the plane's vertices: world scale 1,
    # also when the camera's scale is animated or not evaluated yet.
    keep = plane.constraints.new("LIMIT_SCALE")
    keep.name = "genart camera scale"
    for axis in "xyz":
        for bound in ("min", "max"):
            setattr(keep, f"use_{bound}_{axis}", True)
            setattr(keep, f"{bound}_{axis}", 1.0)
    keep.owner_space = "WORLD"
    for flag in SHADOWLESS:
        setattr(plane, flag, False)
    plane.visible_camera = True
    for flag in NO_PROBES:
        if hasattr(plane, flag):
            setattr(plane, flag, True)
    plane[MARK] = "backdrop"
    return plane


__all__ = ["PREVIOUS", "apply_backdrop", "apply_panorama"]
