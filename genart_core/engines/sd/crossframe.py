"""Cross-frame attention for sequences (issue 9): every self-attention layer of the UNet
also attends to the first and the previous frame of the sequence, at the same denoising
step, so what a surface looked like carries over from frame to frame.

While frame t is denoised, each self-attention layer (`attn1`) records the hidden states
it is given, per step; when frame t+1 is denoised, the same layer at the same step uses
[its own, the first frame's, the previous frame's] hidden states as keys and values
(queries stay its own: every pixel still comes from this frame's content). This is the
cross-frame attention of Text2Video-Zero and Rerender-A-Video, on the pipeline's own
attention processors: nothing of the UNet is replaced, and the processors are put back
after each frame.

The recorded states live in the worker's memory (`Anchors`, one per job), on the model's
device: for SD 1.5 at 512² about 50 MB per denoising step (estimated from the layers'
shapes, not measured), twice (first and previous frame). They are only used when frame
t−1 of the same job, at the same size, steps and guidance, was recorded right before;
after a worker restart the frame runs without them and says so. Cross-attention (text)
layers are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Recording = dict[tuple[str, int], Any]  # (layer, step) -> hidden states (B, N, C)
KEEP = 2  # jobs whose anchors stay in memory (two sequences may interleave)


@dataclass
class Anchors:
    """One job's recorded frames: the first and the previous one, and what they were
    generated with (`key`: size, steps, strength, guidance)."""

    key: tuple[Any, ...]
    first: Recording = field(default_factory=dict)
    previous: Recording = field(default_factory=dict)
    previous_frame: int = -1


class _State:
    """What the processors share while one frame is denoised."""

    def __init__(self, anchors: list[Recording]) -> None:
        self.anchors = anchors
        self.recorded: Recording = {}
        self.step = -1

    def context(self, layer: str, hidden: Any) -> Any:
        import torch

        self.recorded[(layer, self.step)] = hidden.detach()
        extra = [
            r[(layer, self.step)]
            for r in self.anchors
            if (layer, self.step) in r and r[(layer, self.step)].shape[0] == hidden.shape[0]
        ]
        return torch.cat([hidden, *extra], dim=1) if extra else hidden


class CrossFrameProcessor:
    """A self-attention layer's processor: keys and values also from the anchor frames."""

    def __init__(self, layer: str, inner: Any, state: _State) -> None:
        self.layer, self.inner, self.state = layer, inner, state

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if encoder_hidden_states is None and hidden_states.ndim == 3:
            encoder_hidden_states = self.state.context(self.layer, hidden_states)
        return self.inner(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )


@contextmanager
def cross_frame(unet: Any, anchors: list[Recording]) -> Iterator[Recording]:
    """Within the block, `unet`'s self-attention layers attend to `anchors` too; yields the
    frame's own recording (filled as the UNet runs). The processors are restored after."""
    original = dict(unet.attn_processors)
    state = _State(anchors)
    processors = {
        name: CrossFrameProcessor(name, proc, state) if name.endswith("attn1.processor") else proc
        for name, proc in original.items()
    }

    def count_step(*_: Any) -> None:
        state.step += 1

    hook = unet.register_forward_pre_hook(count_step)
    unet.set_attn_processor(processors)
    try:
        yield state.recorded
    finally:
        hook.remove()
        unet.set_attn_processor(original)


def anchors_for(
    jobs: dict[str, Anchors], job: str, frame: int, key: tuple[Any, ...]
) -> tuple[list[Recording], str]:
    """The recordings frame `frame` of `job` attends to, and a note when it should have
    had them but cannot (empty for a sequence's first frame)."""
    a = jobs.get(job)
    if a is None or a.previous_frame != frame - 1 or a.key != key:
        if frame > 0:
            return [], (
                "coherence_attention: the previous frame's attention was not recorded "
                "(a worker restart or a changed size, steps or guidance); this frame ran "
                "without it"
            )
        return [], ""
    return ([a.first] if a.first is a.previous else [a.first, a.previous]), ""


def remember(
    jobs: dict[str, Anchors], job: str, frame: int, key: tuple[Any, ...], recorded: Recording
) -> None:
    """Frame `frame`'s recording becomes the previous frame's (and the first's, for a
    sequence's first frame or after a gap); the last KEEP jobs are kept."""
    a = jobs.get(job)
    if a is None or a.key != key or a.previous_frame != frame - 1:
        jobs.pop(job, None)
        while len(jobs) >= KEEP:
            jobs.pop(next(iter(jobs)))
        jobs[job] = Anchors(key, recorded, recorded, frame)
        return
    a.previous, a.previous_frame = recorded, frame
