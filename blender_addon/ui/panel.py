"""The genart tab in the 3D view's sidebar (N panel): the sidecar's state and a check, and
the engines: per task the engine the sidecar offers, what it can do, and its parameters.

Draw code only: it reads the session's state, the registered engine groups and the
scene's values; no I/O, no registration (that is `properties.sync_engines`, on a timer).
"""

from __future__ import annotations

from typing import Any

import bpy

from .. import bridge, properties, render_hook, runtime
from ..client.session import READY
from ..optypes import Icon

ICONS: dict[str, Icon] = {"ready": "CHECKMARK", "dead": "ERROR", "restarting": "FILE_REFRESH"}


def sidecar_state_text(context: bpy.types.Context) -> str:
    """One line for the sidecar's state, from the add-on's session (cheap: no I/O)."""
    return runtime.session().text


def model_line(context: bpy.types.Context) -> str:
    """'Model: embedded genart-micro-sd (none set)' while the scene's sd model is empty and
    the sidecar has an embedded default; '' otherwise."""
    settings: Any = getattr(context.scene, "genart", None)
    sd: Any = getattr(getattr(settings, "engines", None), "sd", None)
    if sd is None or str(getattr(sd, "model", "")):
        return ""
    default = runtime.session().default_model("sd")
    return f"Model: embedded {default['name']} (none set)" if default else ""


class VIEW3D_PT_genart(bpy.types.Panel):
    bl_label = "genart"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "genart"

    def draw(self, context: bpy.types.Context) -> None:
        layout = _layout(self)
        session = runtime.session()
        col = layout.column()
        col.label(
            text=f"Sidecar: {sidecar_state_text(context)}", icon=ICONS.get(session.state, "NONE")
        )
        if session.state == READY:
            col.label(text=session.memory_text, icon="MEMORY")
            if session.models_text:
                col.label(text=session.models_text, icon="FILE_3D")
            line = model_line(context)
            if line:
                col.label(text=line, icon="INFO")
        col.operator("genart.check_sidecar", icon="PLUGIN")
        actions = layout.column(align=True)
        actions.operator("genart.texture_from_camera", icon="TEXTURE")
        actions.operator("genart.tileable", icon="TEXTURE_DATA")
        actions.operator("genart.background", icon="WORLD")
        render_hook.draw_panel(layout, context)
        report = str(getattr(getattr(context.scene, "genart", None), "stylize_report", ""))
        if report:
            layout.label(text=f"Last stylize: {report}", icon="SEQUENCE")
        for job in session.jobs.active():
            box = layout.box()
            row = box.row()
            row.label(text=f"{job.label}: {job.text}", icon="TIME")
            if job.id is not None:
                row.operator("genart.cancel_job", text="", icon="CANCEL").job = job.id
            box.progress(factor=job.fraction, text=f"{job.fraction * 100:.0f}%")


def _layout(panel: bpy.types.Panel) -> bpy.types.UILayout:
    """The panel's layout: set while Blender draws it (the stubs type it Optional)."""
    layout = panel.layout
    assert layout is not None
    return layout


def draw_task(layout: bpy.types.UILayout, settings: Any, task: str) -> None:
    """One foldout: the task's engine selector, the engine's capabilities (those it lacks
    greyed, with the reason) and its parameters (help as tooltips, bad values in red)."""
    names = properties.offered(task)
    header, body = layout.panel(f"genart_task_{task}", default_closed=True)
    header.label(text=properties.TASK_LABELS[task])
    if names:
        header.prop(settings, f"{task}_engine", text="")
    if body is None:
        return
    if not names:
        body.label(text=f"No engine of the sidecar offers {task}", icon="INFO")
        return
    name = properties.chosen_engine(settings, task)
    engine = properties.engine_spec(name)
    if engine is None:
        return
    group = properties.engine_group(settings, name)
    built = properties.current()
    if group is None and built is not None and name in built.failed:
        body.label(text=f"Cannot set up {name}: {built.failed[name]}", icon="ERROR")

    caps = body.column(align=True)
    for cap in bridge.capabilities(engine, group):
        row = caps.row()
        row.enabled = cap.available
        row.label(text=cap.text, icon="CHECKMARK" if cap.available else "CANCEL")

    col = body.column()
    for spec in engine.drawn_params():
        if group is None or not hasattr(group, spec.prop):
            row = col.row()
            row.enabled = False
            row.label(text=f"{bpy.path.display_name(spec.name)}: type {spec.type!r} not drawn")
            continue
        error = bridge.field_error(group, spec)
        row = col.row()
        row.alert = error is not None
        row.prop(group, spec.prop)
        if error is not None:
            col.label(text=error, icon="ERROR")


class VIEW3D_PT_genart_engines(bpy.types.Panel):
    bl_label = "Engines"
    bl_parent_id = "VIEW3D_PT_genart"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "genart"

    def draw(self, context: bpy.types.Context) -> None:
        layout = _layout(self)
        settings = getattr(context.scene, "genart", None)
        if settings is None:
            return
        if properties.current() is None:
            layout.label(text="The engines appear when the sidecar is ready", icon="INFO")
            return
        if runtime.session().state != READY:
            layout.label(text="Sidecar not ready: its last engines", icon="ERROR")
        for task in properties.TASKS:
            draw_task(layout, settings, task)


class IMAGE_PT_genart_recipe(bpy.types.Panel):
    """The recipe of a genart image (Image Editor > sidebar > genart), with Re-generate."""

    bl_label = "genart recipe"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "genart"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        image = getattr(context.space_data, "image", None)
        return image is not None and "genart" in image

    def draw(self, context: bpy.types.Context) -> None:
        from .. import images

        space = context.space_data
        assert isinstance(space, bpy.types.SpaceImageEditor)  # bl_space_type
        image = space.image
        assert image is not None  # poll checked it
        recipe = images.recipe_of(image) or {}
        params = recipe.get("params") or {}
        layout = _layout(self)
        col = layout.column(align=True)
        for label, value in (
            ("Action", recipe.get("action")),
            ("Engine", recipe.get("engine")),
            ("Model", recipe.get("model")),
            ("Prompt", params.get("prompt")),
            ("Negative", params.get("negative_prompt")),
            ("Seed", params.get("seed")),
            ("Steps", params.get("steps")),
            ("View transform", recipe.get("view_transform")),
        ):
            if value not in (None, ""):
                col.label(text=f"{label}: {value}")
        layout.operator("genart.regenerate", icon="FILE_REFRESH").image = image.name
