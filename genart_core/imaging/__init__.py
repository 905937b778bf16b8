"""Numeric image work that needs no Blender and no model: depth and normal maps for
control, size mapping, conversions between the protocol's arrays and model inputs."""
