"""Engines: the generators the sidecar's worker runs, found by name.

`available_engines` returns the engine classes this installation offers: the test engine
when asked for, and every class registered by an installed package under the
`genart.engines` entry-point group. Importing this package loads no model library.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from .base import Engine

ENTRY_POINT_GROUP = "genart.engines"
log = logging.getLogger(__name__)


def available_engines(test_engines: bool = False) -> dict[str, type[Engine]]:
    found: dict[str, type[Engine]] = {}
    if test_engines:
        from .fake import FakeEngine

        found[FakeEngine.name] = FakeEngine
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception:  # a broken plugin must not take the others down
            log.exception("cannot load engine entry point %s", ep.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            log.error("entry point %s is not an Engine subclass", ep.value)
            continue
        found.setdefault(cls.name, cls)
    return found
