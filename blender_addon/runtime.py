"""The add-on's one live `Session`, kept between operator calls, timers and draws.

`RUNTIME` is the add-on's single mutable registry (STYLE.md allows one, documented here):
it holds the `Session` from `register()` to `unregister()`. Blender quitting does not
call `unregister()` and `bpy.app.handlers` has no quit handler, so an `atexit` hook stops
a launched sidecar too (the sidecar's `--parent-pid` watchdog is the last resort).

The timer ticks the session on the main thread; the session's network I/O runs on its
client's threads. In `blender -b` timers do not fire while a script blocks, so headless
code calls `session().wait(...)` or `session().tick()` itself.
"""

from __future__ import annotations

import atexit

import bpy

from .client.session import STOPPED, Session

TICK_SECONDS = 0.25


class _Runtime:
    """The holder: one Session or None while the add-on is not registered."""

    session: Session | None = None


RUNTIME = _Runtime()


def session() -> Session:
    """The add-on's session (a stopped one if the add-on is not registered)."""
    if RUNTIME.session is None:
        RUNTIME.session = Session(client_info={"blender": bpy.app.version_string})
    return RUNTIME.session


def _tick() -> float:
    s = RUNTIME.session
    if s is not None and s.state != STOPPED:
        s.tick()
    return TICK_SECONDS


def _at_exit() -> None:
    s = RUNTIME.session
    if s is not None:
        s.stop(timeout=2.0)


def register() -> None:
    session()
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_SECONDS, persistent=True)
    atexit.register(_at_exit)


def unregister() -> None:
    atexit.unregister(_at_exit)
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    s, RUNTIME.session = RUNTIME.session, None
    if s is not None:
        s.stop()


__all__ = ["RUNTIME", "register", "session", "unregister"]
