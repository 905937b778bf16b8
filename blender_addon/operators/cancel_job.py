"""Cancel job: the panel's button that cancels one running job (and only that one)."""

from __future__ import annotations

import bpy

from .. import runtime
from ..optypes import OperatorResult


class GENART_OT_cancel_job(bpy.types.Operator):
    """Cancel this genart job (the scene stays as it was)"""

    bl_idname = "genart.cancel_job"
    bl_label = "Cancel job"
    bl_options = {"REGISTER"}

    job: bpy.props.StringProperty(name="Job")  # type: ignore[valid-type]

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        jobs = runtime.session().jobs
        job = next((j for j in jobs.active() if j.id == self.job), None)
        if job is None:
            self.report({"WARNING"}, f"job {self.job} is not running")
            return {"CANCELLED"}
        jobs.cancel(job)
        self.report({"INFO"}, f"Cancelling {job.label}")
        return {"FINISHED"}
