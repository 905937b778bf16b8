"""Draw code only: the genart panels."""

from .panel import IMAGE_PT_genart_recipe, VIEW3D_PT_genart, VIEW3D_PT_genart_engines

CLASSES = (VIEW3D_PT_genart, VIEW3D_PT_genart_engines, IMAGE_PT_genart_recipe)
