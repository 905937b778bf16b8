"""Job events: recorded in the store first, then pushed to the connections watching them.

A connection watches the jobs it submitted and any job it asks `events` to watch. Previews
are the one exception to "recorded first": they are large, frequent and only the latest
matters, so the hub keeps the latest per job in memory and pushes it live.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from genart_core.protocol.framing import Attachment

from .store import Store

MAX_PREVIEWS = 64


class Subscriber(Protocol):
    def send_event(self, params: dict[str, Any], attachments: list[Attachment]) -> None: ...


class EventHub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()
        # Latest preview per job, for the most recent jobs only (small images, bounded).
        self._previews: OrderedDict[str, tuple[dict[str, Any], Attachment]] = OrderedDict()
        self.on_terminal: Callable[[str], None] = self.ended

    def watch(self, sub: Subscriber, job: str | None) -> None:
        with self._lock:
            if job is None:
                self._all.add(sub)
            else:
                self._watchers.setdefault(job, set()).add(sub)

    def drop(self, sub: Subscriber) -> None:
        with self._lock:
            self._all.discard(sub)
            for subs in self._watchers.values():
                subs.discard(sub)

    def _targets(self, job: str) -> list[Subscriber]:
        with self._lock:
            return list(self._all | self._watchers.get(job, set()))

    def emit(self, job: str, type_: str, data: dict[str, Any]) -> int:
        """Records an event and pushes it to the job's watchers. Returns its seq."""
        seq = self.store.add_event(job, type_, data)
        params = {"job": job, "seq": seq, "type": type_, "data": data}
        for sub in self._targets(job):
            sub.send_event(params, [])
        return seq

    def preview(self, job: str, data: dict[str, Any], image: Attachment) -> None:
        with self._lock:
            self._previews[job] = (data, image)
            self._previews.move_to_end(job)
            while len(self._previews) > MAX_PREVIEWS:
                self._previews.popitem(last=False)
        params = {"job": job, "seq": 0, "type": "preview", "data": data}
        for sub in self._targets(job):
            sub.send_event(params, [image])

    def latest_preview(self, job: str) -> tuple[dict[str, Any], Attachment] | None:
        with self._lock:
            return self._previews.get(job)

    def ended(self, job: str) -> None:
        """A job reached its terminal event: nobody needs to be told more about it."""
        with self._lock:
            self._watchers.pop(job, None)
