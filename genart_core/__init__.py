"""genart_core: the engine side of genart (protocol, engines, imaging). Never imports bpy.

Importing this package is cheap: heavy modules (torch, diffusers) load only inside the
engines that need them.
"""

__version__ = "0.1.0"
