"""Types that the bpy stubs spell at length, named once for the add-on's annotations.

Only mypy (with fake-bpy-module, see dev/test.sh) reads them; Blender never looks at a
method's annotations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

# What Operator.execute/invoke/modal return: bpy.types.Operator's own return type (a set is
# invariant, so `set[str]` does not match it).
OperatorResult = set[Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]]

# One of Operator.bl_options' flags.
OperatorFlag = Literal[
    "REGISTER",
    "UNDO",
    "UNDO_GROUPED",
    "BLOCKING",
    "MACRO",
    "GRAB_CURSOR",
    "GRAB_CURSOR_X",
    "GRAB_CURSOR_Y",
    "DEPENDS_ON_CURSOR",
    "PRESET",
    "INTERNAL",
    "MODAL_PRIORITY",
]

# One of the kinds Operator.report takes in its `type` set.
ReportKind = Literal[
    "DEBUG",
    "INFO",
    "OPERATOR",
    "PROPERTY",
    "WARNING",
    "ERROR",
    "ERROR_INVALID_INPUT",
    "ERROR_INVALID_CONTEXT",
    "ERROR_OUT_OF_MEMORY",
]

if TYPE_CHECKING:
    # An icon name (UILayout's `icon=`): Blender has about a thousand, so they are taken
    # from fake-bpy-module rather than spelled here.
    from bpy.stub_internal.rna_enums import IconItems as Icon
else:
    Icon = str
