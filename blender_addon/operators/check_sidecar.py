"""Check sidecar: says what works (reachable, protocol, device, engines) and what not.

It (re)starts the session with the current preferences when needed. In the UI it returns
at once and the panel (ticked by a timer) shows the outcome; in `blender -b`, where timers
do not fire, it ticks the session itself for a bounded time and reports the outcome.
Every failure becomes one `self.report` line that says how to configure; no traceback.
"""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout

import bpy

from .. import runtime
from ..client import PROTOCOL_MAJOR, PROTOCOL_MINOR, GenartError
from ..client.session import DEAD, READY, STOPPED, Session
from ..optypes import OperatorResult
from ..preferences import preferences

CHECK_TIMEOUT = 15.0  # seconds: a launched sidecar must come up within this
PING_TIMEOUT = 3.0
MODELS_TIMEOUT = 10.0  # seconds (no hashing: configs and headers only)

HOW_TO_CONFIGURE = (
    "Configure it in Preferences > Add-ons > genart (Launch: the sidecar's Python or "
    "command; Connect: its connection file or host:port), or set GENART_SIDECAR / "
    "GENART_CONNECTION_FILE"
)


def check_text(session: Session, pong_ms: float | None) -> str:
    welcome = session.welcome
    engines = ", ".join(str(e.get("name", "?")) for e in welcome.get("engines", [])) or "none"
    ready = "" if welcome.get("engines_ready", True) else " (engines still loading)"
    ping = f", ping {pong_ms:.0f} ms" if pong_ms is not None else ""
    models = f"; {session.models_text}" if session.models_text else ""
    default = session.default_model_text()
    models += f"; model: {default}" if default else ""
    return (
        f"Sidecar ready: protocol {welcome.get('protocol_version', '?')} (add-on speaks "
        f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}), device {welcome.get('device', '?')}, "
        f"{session.memory_text}, pid {welcome.get('pid', '?')}{ping}, engines {engines}"
        f"{ready}{models}"
    )


class GENART_OT_check_sidecar(bpy.types.Operator):
    """Check that the genart sidecar is reachable and report what it offers"""

    bl_idname = "genart.check_sidecar"
    bl_label = "Check sidecar"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        try:
            settings = preferences(context).effective()
        except (KeyError, ValueError) as exc:
            self.report({"ERROR"}, f"genart settings are invalid: {exc}. {HOW_TO_CONFIGURE}")
            return {"CANCELLED"}
        session = runtime.session()
        if session.state in (STOPPED, DEAD) or session.settings != settings:
            session.start(settings)
        if not bpy.app.background and session.state != READY:
            # Never freeze the UI: the timer ticks the session and the panel shows the outcome.
            self.report({"INFO"}, f"Checking the sidecar: {session.text} (see the genart panel)")
            return {"FINISHED"}
        state = session.wait(CHECK_TIMEOUT, stop_on_failure=True)
        if state != READY:
            reason = session.reason or f"no answer within {CHECK_TIMEOUT:.0f} s"
            self.report({"ERROR"}, f"Sidecar not reachable: {reason}. {HOW_TO_CONFIGURE}")
            return {"CANCELLED"}
        pong_ms = None
        client = session.client
        session.list_models()
        if client is not None and bpy.app.background:  # blocking waits only where allowed
            t0 = time.monotonic()
            try:
                client.request("ping").result(PING_TIMEOUT)
                pong_ms = (time.monotonic() - t0) * 1000.0
            except (GenartError, FutureTimeout) as exc:
                self.report({"WARNING"}, f"Sidecar connected but does not answer ping: {exc}")
            deadline = time.monotonic() + MODELS_TIMEOUT
            while session.models is None and not session.models_error:
                session.tick()
                if time.monotonic() >= deadline:
                    session.models_error = f"models not listed within {MODELS_TIMEOUT:.0f} s"
                    break
                time.sleep(0.02)
        from .. import properties

        properties.sync_engines(session.welcome)  # scripts can set engine values at once
        self.report({"INFO"}, check_text(session, pong_ms))
        return {"FINISHED"}
