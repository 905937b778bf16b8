"""Draw code only: the genart panels."""

from .panel import VIEW3D_PT_genart, VIEW3D_PT_genart_engines

CLASSES = (VIEW3D_PT_genart, VIEW3D_PT_genart_engines)
