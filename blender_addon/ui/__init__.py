"""Draw code only: the genart panels."""

from .panel import VIEW3D_PT_genart

CLASSES = (VIEW3D_PT_genart,)
