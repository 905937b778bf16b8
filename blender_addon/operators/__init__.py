"""Operators: one file per user action (`generate` is the frame they share)."""

from .background import GENART_OT_background
from .cancel_job import GENART_OT_cancel_job
from .check_sidecar import GENART_OT_check_sidecar
from .regenerate import GENART_OT_regenerate
from .render_passes import GENART_OT_setup_render_passes
from .stylize import GENART_OT_stylize_animation
from .texture import GENART_OT_texture_from_camera
from .tileable import GENART_OT_tileable

CLASSES = (
    GENART_OT_check_sidecar,
    GENART_OT_texture_from_camera,
    GENART_OT_tileable,
    GENART_OT_background,
    GENART_OT_stylize_animation,
    GENART_OT_regenerate,
    GENART_OT_cancel_job,
    GENART_OT_setup_render_passes,
)
