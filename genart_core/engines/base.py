"""The engine interface: what every generator the sidecar runs must provide.

An engine has a name, the tasks it serves, a declarative parameter schema and a `run` that
turns one frame's inputs into outputs, reporting progress and previews through a
`RunContext` and stopping when the context says it was cancelled. Engines run only in the
sidecar's worker process. This module is stdlib only; engines import their heavy
libraries themselves.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..protocol.errors import GenartError
from .schema import Param

TASKS = ("txt2img", "img2img", "control", "inpaint", "sequence")


class Yield(Exception):  # noqa: N818 - not an error: the engine hands the worker back
    """Raised by a `background` engine after a chunk of work (its state saved): the frame
    goes back to the queue behind other jobs and runs again later, resuming."""


class Cancelled(GenartError):
    """Raised inside an engine's run when its job was cancelled (not a failure)."""

    code = -32024
    name = "engine_cancelled"


@dataclass(frozen=True)
class Input:
    """One input of a frame as the worker hands it to an engine: stored on local disk."""

    name: str
    kind: str  # array | blob | path
    path: Path
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    color_space: str | None = None
    encoding: str | None = None

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


@dataclass
class Output:
    """One result of a frame: an array the worker stores and the server sends back."""

    name: str
    data: Any  # a buffer: bytes, bytearray, C-contiguous numpy array
    dtype: str
    shape: tuple[int, ...]
    color_space: str = "srgb"


@dataclass
class PreviousFrame:
    """A sequence's previous frame as committed: its inputs and its stored outputs (read
    them like inputs: `read_inputs` or `Input.read_bytes`)."""

    inputs: dict[str, Input]
    outputs: dict[str, Input]


@dataclass
class RunContext:
    """What an engine gets besides its inputs: where it is and how to report back."""

    job: str
    frame: int
    frames: int | None
    attempt: int
    on_progress: Callable[[int, int], None] = lambda step, steps: None
    on_preview: Callable[[Output], None] = lambda output: None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    warnings: list[str] = field(default_factory=list)
    # A sequence's previous frame once committed (None for the first frame, stills, or
    # when it failed): engines that carry state across frames read it from here.
    previous: PreviousFrame | None = None

    def progress(self, step: int, steps: int) -> None:
        self.check_cancelled()
        self.on_progress(step, steps)

    def preview(self, output: Output) -> None:
        self.on_preview(output)

    def warn(self, message: str) -> None:
        """Reports a fallback or an approximation; it reaches the client with the result."""
        self.warnings.append(message)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Call once per step: raises Cancelled when the job was cancelled."""
        if self.cancel_event.is_set():
            raise Cancelled(f"job {self.job} cancelled")


class Engine(ABC):
    """Base of every engine. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    tasks: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[Param, ...]] = ()
    help: ClassVar[str] = ""
    # Background engines (training) get the worker only when no other job waits; their
    # frames work in chunks and raise `Yield` between them.
    background: ClassVar[bool] = False
    # What the engine can do whatever model it runs, e.g. {"depth_control": True}. Per
    # model capabilities come from `model_capabilities` once a model is known.
    capabilities: ClassVar[dict[str, Any]] = {}
    # Inputs the engine reads, by name: {"image": "RGBA uint8 or float32 sRGB", ...}.
    inputs: ClassVar[dict[str, str]] = {}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The engine as advertised in the handshake: name, tasks, schema, capabilities."""
        return {
            "name": cls.name,
            "version": cls.version,
            "tasks": list(cls.tasks),
            "params": [p.to_dict() for p in cls.params],
            "inputs": dict(cls.inputs),
            "capabilities": dict(cls.capabilities),
            "help": cls.help,
            "background": cls.background,
        }

    def model_capabilities(self, params: dict[str, Any]) -> dict[str, Any]:
        """Capabilities of the model `params` select (may load it). Default: the engine's."""
        return dict(self.capabilities)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Releases models and memory (called on unload and at worker exit)."""

    def offload(self) -> None:
        """Moves models off the accelerator until the next run (default: `close`)."""
        self.close()

    @abstractmethod
    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        """Generates one frame. Must call ctx.progress(step, steps) at every step."""
