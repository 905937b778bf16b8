"""Runs inside the bpy wheel (tests/test_blender_cli.py) as `blender -b BLEND --command genart
ARGV...` would: install the extension, open BLEND, call the registered `genart` handler with
ARGV and exit the process with what it returns. `ZIP`, `BLEND` and `ARGV` are prepended."""

import importlib
import sys

import bpy

bpy.ops.wm.read_factory_settings(use_empty=True)  # first: it would unload the add-on
assert bpy.ops.extensions.package_install_files(
    repo="user_default",
    filepath=ZIP,  # noqa: F821 (prepended by the test)
    enable_on_install=True,
) == {"FINISHED"}
bpy.ops.wm.open_mainfile(filepath=BLEND)  # noqa: F821
cli = importlib.import_module("bl_ext.user_default.genart.cli")
assert cli.registered()
sys.exit(cli.main(ARGV))  # noqa: F821
