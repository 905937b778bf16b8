"""Shared by the scene scripts that run inside the bpy wheel (importable there because
`test_blender_addon.scene_script` puts this folder on sys.path): a fresh Blender with the
built add-on installed, and the small animated scene the sequence tests render."""

import importlib
import math
from pathlib import Path
from types import ModuleType

import bpy

MOD = "bl_ext.user_default.genart"


def install_addon(zip_path: str) -> ModuleType:
    """Factory settings first (they would unload the add-on), then the zip installed and
    enabled through Blender's extension system; the add-on's package."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert bpy.ops.extensions.package_install_files(
        repo="user_default", filepath=zip_path, enable_on_install=True
    ) == {"FINISHED"}
    return importlib.import_module(MOD)


def six_frame_scene(
    out: Path, blend: str = "anim.blend"
) -> tuple[bpy.types.Scene, bpy.types.Object]:
    """Cycles at one sample, 64×48; a ground plane and a cube keyed on each of frames 1-6 (linear,
    so changing keys 5-6 leaves frames 1-4 exactly as they were), a camera; saved as
    out/blend. Returns the scene and the cube."""
    sc = bpy.context.scene
    bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
    sc.render.engine = "CYCLES"
    sc.cycles.samples = 1
    sc.cycles.device = "CPU"
    sc.cycles.use_denoising = False
    sc.render.resolution_x, sc.render.resolution_y = 64, 48
    sc.frame_start, sc.frame_end = 1, 6
    bpy.ops.mesh.primitive_plane_add(size=20)
    bpy.ops.mesh.primitive_cube_add(size=2, location=(-3, 0, 1))
    cube = bpy.context.object
    for f, x in enumerate((-3.0, -2.0, -1.0, 0.0, 1.0, 2.0), start=1):
        cube.location.x = x
        cube.keyframe_insert("location", frame=f)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    sc.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0, -10, 5), (math.radians(65), 0, 0)
    sc.camera = cam
    bpy.ops.wm.save_as_mainfile(filepath=str(out / blend))
    return sc, cube
