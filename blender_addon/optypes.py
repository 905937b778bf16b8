"""Types that the bpy stubs spell at length, named once for the add-on's annotations.

Only mypy (with fake-bpy-module, see dev/test.sh) reads them; Blender never looks at a
method's annotations.
"""

from __future__ import annotations

from typing import Literal

# What Operator.execute/invoke/modal return: bpy.types.Operator's own return type (a set is
# invariant, so `set[str]` does not match it).
OperatorResult = set[Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]]
