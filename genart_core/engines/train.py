"""The `train` engine: training a micro model as a sidecar job (issue 8).

A job trains the model in the folder `out` (created, or resumed from its checkpoint) up
to `steps` in total, in chunks: after `chunk_seconds` of training it saves a checkpoint
and yields (`Yield`), so the runner puts the frame back in the queue behind every
generation job (this engine is `background`: the store hands its frames out last) and
an hour of training never blocks the artist's next image. Progress is the step out of
`steps`; a cancel saves a checkpoint first; a sidecar crash loses at most one chunk (the
frame is run again and resumes from the checkpoint). The result is the evaluation
(`metrics`, JSON bytes) and, for the diffusion model, the contact sheet of the
evaluation prompts (`samples`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol.errors import InvalidParams
from .base import Cancelled, Engine, Input, Output, RunContext, Yield
from .schema import Param


class TrainEngine(Engine):
    name = "train"
    version = "1"
    tasks = ("diffusion", "vqgan")
    background = True
    help = (
        "Trains a micro model (genart train): the diffusion model (autoencoder, then UNet) "
        "or the VQGAN, from the procedural textures or a folder of images; in chunks "
        "between generation jobs, resumable."
    )
    params = (
        Param("out", "string", "", "the model folder (created, or resumed)", max=4096),
        Param("steps", "int", 4200, "total training steps", min=1, max=10_000_000),
        Param(
            "chunk_seconds",
            "float",
            30.0,
            "train this long, then let queued generation jobs go first",
            min=0.1,
            max=3600.0,
        ),
        Param(
            "data",
            "string",
            "procedural",
            "'procedural' or a folder of images (captions: .txt beside them or file names)",
            max=4096,
        ),
        Param("seed", "int", 0, "the run's seed", min=0, max=2**31 - 1),
        Param("ae_steps", "int", 1200, "diffusion: steps of the autoencoder stage", min=0),
        Param("batch", "int", 0, "batch size (0: the model's default, 32 or 8)", min=0, max=4096),
        Param("lr", "float", 0.0, "learning rate (0: the model's default)", min=0.0, max=1.0),
        Param("eval_seeds", "int", 8, "seeds per evaluation prompt", min=1, max=64),
        Param("eval_images", "int", 180, "autoencoder evaluation images", min=1, max=10_000),
    )

    def __init__(self) -> None:
        # The trainer of the last chunk, kept between chunks (loading a checkpoint costs
        # more than a chunk of a test run): (task, folder, step saved) → trainer.
        self._live: tuple[tuple[str, Path, int], Any, Any] | None = None

    def close(self) -> None:
        self._live = None

    def run(
        self, task: str, params: dict[str, Any], inputs: dict[str, Input], ctx: RunContext
    ) -> list[Output]:
        if not params["out"]:
            raise InvalidParams("name the model folder to train into", field="params.out")
        out = Path(params["out"]).expanduser()
        if params["data"] != "procedural" and not Path(params["data"]).expanduser().is_dir():
            raise InvalidParams(f"no folder at {params['data']}", field="params.data")
        trainer, evaluate = self._resume(task, out, params)
        steps = int(params["steps"])
        started = time.monotonic()
        wall = 0.0
        try:
            while trainer.step < steps:
                ctx.progress(trainer.step, steps)  # raises Cancelled
                trainer.train_step()
                if time.monotonic() - started >= params["chunk_seconds"] and trainer.step < steps:
                    trainer.save(out)
                    self._live = ((task, out, trainer.step), trainer, evaluate)
                    raise Yield(f"trained to step {trainer.step} of {steps}")
        except Cancelled:
            trainer.save(out)
            raise
        wall = time.monotonic() - started
        ctx.progress(steps, steps)
        sheet = out.with_name(out.name + "-samples.png")
        metrics = evaluate(trainer, wall, sheet)
        trainer.save(out, metrics)
        self._live = None
        blob = np.frombuffer(json.dumps(metrics).encode(), np.uint8)
        outputs = [Output("metrics", blob, "uint8", (len(blob),), "linear")]
        if sheet.is_file():
            from PIL import Image

            with Image.open(sheet) as im:
                pixels = np.ascontiguousarray(np.asarray(im.convert("RGB")))
            outputs.append(Output("samples", pixels, "uint8", pixels.shape, "srgb"))
        return outputs

    def _resume(self, task: str, out: Path, params: dict[str, Any]) -> tuple[Any, Any]:
        """The live trainer when it is the one whose checkpoint is on disk, else a new one
        or one loaded from the checkpoint."""
        live, self._live = self._live, None
        if live is not None and live[0][:2] == (task, out):
            info = out / "training" / "trainer.json"
            if info.is_file() and json.loads(info.read_text())["step"] == live[0][2]:
                return live[1], live[2]
        return _trainer(task, out, params)


def _trainer(task: str, out: Path, params: dict[str, Any]) -> tuple[Any, Any]:
    """The trainer for `out` (resumed when it holds a checkpoint) and its evaluation."""
    from ..micro.train_vqgan import find_checkpoint

    resume = find_checkpoint(out) is not None
    if task == "diffusion":
        from ..micro import sd
        from ..micro.train_sd import SDTrainConfig, Trainer, evaluation

        def evaluate(t: Any, wall: float, sheet: Path) -> Any:
            return evaluation(t, wall, sheet, params["eval_seeds"], params["eval_images"])

        if resume:
            return Trainer.load(out), evaluate
        cfg = SDTrainConfig(
            model=sd.MicroSDConfig(),
            seed=params["seed"],
            ae_steps=params["ae_steps"],
            data=str(Path(params["data"]).expanduser())
            if params["data"] != "procedural"
            else "procedural",
            **({"lr": params["lr"]} if params["lr"] else {}),
            **({"batch": params["batch"]} if params["batch"] else {}),
        )
        try:
            return Trainer(cfg), evaluate
        except ValueError as exc:
            raise InvalidParams(str(exc), field="params.data") from None
    from ..micro.train_vqgan import TrainConfig, evaluation_dict
    from ..micro.train_vqgan import Trainer as VQTrainer

    def evaluate_vq(t: Any, wall: float, sheet: Path) -> Any:
        return evaluation_dict(t, wall)

    if params["data"] != "procedural":
        raise InvalidParams("the VQGAN trains on the procedural textures only", field="params.data")
    if resume:
        return VQTrainer.load(out), evaluate_vq
    vcfg = TrainConfig(
        seed=params["seed"],
        eval_images=params["eval_images"],
        **({"lr": params["lr"]} if params["lr"] else {}),
        **({"batch": params["batch"]} if params["batch"] else {}),
    )
    return VQTrainer(vcfg), evaluate_vq
