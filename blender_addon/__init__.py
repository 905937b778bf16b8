"""genart for Blender: registers the add-on's classes and its session holder, nothing else.

What the add-on does lives in its submodules: `preferences`, `properties` (the user's
intent on the scene, with the engines' parameter groups built from the sidecar's schema),
`bridge` (properties -> checked request parameters), `operators/` (one file per user
action), `ui/` (draw code), `runtime` (the one live sidecar session), `client/` (the
sidecar connection, no `bpy`) and `_vendor/genart_protocol` (a build-generated copy of
`genart_core.protocol`).
"""

import bpy

from . import cli, images, operators, preferences, properties, render_hook, runtime, ui

CLASSES = (*preferences.CLASSES, *properties.CLASSES, *operators.CLASSES, *ui.CLASSES)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register()
    images.register()
    runtime.register()
    render_hook.register()
    cli.register()


def unregister() -> None:
    cli.unregister()
    render_hook.unregister()
    runtime.unregister()
    images.unregister()
    properties.unregister()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
