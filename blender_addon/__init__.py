"""genart for Blender: registers the add-on's classes, nothing else.

What the add-on does lives in its submodules: `preferences`, `ui/` (draw code), `client/`
(the sidecar connection, no `bpy`) and `_vendor/genart_protocol` (a build-generated copy
of `genart_core.protocol`).
"""

import bpy

from . import preferences, ui

CLASSES = (*preferences.CLASSES, *ui.CLASSES)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
