"""The engine worker: a child process of the sidecar server that runs engines.

It is the only process that imports model libraries (torch). It speaks the genart framing
over its stdin/stdout pipes with the server: `ready` once, then for every `run` request a
stream of `progress`/`preview` notifications and one of `done`, `error` or `cancelled`.
Outputs are written atomically to the folder the server names before `done` is sent, so
a crash at any point leaves either a whole output or none. It exits when its stdin closes
(the server is gone). Its stdout is reserved for the protocol: prints go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

from genart_core.engines import available_engines
from genart_core.engines.base import (
    Cancelled,
    Engine,
    Input,
    Output,
    PreviousFrame,
    RunContext,
    Yield,
)
from genart_core.protocol import messages
from genart_core.protocol.atomicio import atomic_write
from genart_core.protocol.errors import (
    ConnectionLost,
    EngineFailed,
    GenartError,
    InternalError,
    OutOfMemory,
)
from genart_core.protocol.framing import Attachment, FrameStream

from .procutil import pid_alive

log = logging.getLogger("genart.worker")


class Worker:
    def __init__(self, rfile: BinaryIO, wfile: BinaryIO, engines: dict[str, type[Engine]]):
        self.stream = FrameStream(rfile=rfile, wfile=wfile)
        self.engine_classes = engines
        self.engines: dict[str, Engine] = {}
        self.runs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.current_job: str | None = None
        self.cancel_event = threading.Event()
        self.write_lock = threading.Lock()

    def send(self, method: str, params: dict[str, Any], attachments: list[Attachment] = ()) -> None:  # type: ignore[assignment]
        with self.write_lock:
            self.stream.write_message(messages.notification(method, params), attachments)

    def read_loop(self) -> None:
        """Reader thread: queues runs, flags cancels, exits the process on EOF."""
        while True:
            try:
                msg = self.stream.read_message()
            except (ConnectionLost, OSError, GenartError):
                log.info("server pipe closed; worker exits")
                os._exit(0)
            method = msg.envelope.get("method")
            params = msg.envelope.get("params") or {}
            if method == "run":
                self.runs.put(params)
            elif method == "cancel":
                if params.get("job") == self.current_job:
                    self.cancel_event.set()
            elif method in ("unload", "offload"):
                self.runs.put({"_memory": method})
            elif method == "shutdown":
                self.runs.put(None)
                return

    def serve(self) -> None:
        self.send(
            "ready",
            {
                "pid": os.getpid(),
                "engines": [cls.describe() for cls in self.engine_classes.values()],
                "device": os.environ.get("GENART_DEVICE", "auto"),
                "memory": memory_info(),
            },
        )
        threading.Thread(target=self.read_loop, name="worker-reader", daemon=True).start()
        while True:
            run = self.runs.get()
            if run is None:
                return
            if "_memory" in run:
                self.release(run["_memory"])
                continue
            self.execute(run)

    def release(self, mode: str) -> None:
        """Frees the device for other work (Blender rendering): `unload` drops the models,
        `offload` moves them to the CPU until the next job needs them."""
        for engine in self.engines.values():
            if mode == "unload":
                engine.close()
            else:
                engine.offload()
        if mode == "unload":
            self.engines.clear()
        gc.collect()
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.send("released", {"mode": mode, "memory": memory_info()})

    def engine(self, name: str) -> Engine:
        if name not in self.engines:
            self.engines[name] = self.engine_classes[name]()
        return self.engines[name]

    def execute(self, run: dict[str, Any]) -> None:
        job, frame = run["job"], run["frame"]
        self.current_job = job
        self.cancel_event.clear()
        ids = {"job": job, "frame": frame}
        ctx = RunContext(
            job=job,
            frame=frame,
            frames=run.get("frames"),
            attempt=run.get("attempt", 1),
            on_progress=lambda step, steps: self.send(
                "progress", {**ids, "step": step, "steps": steps}
            ),
            on_preview=lambda out: self.send("preview", ids, [_attachment(out)]),
            cancel_event=self.cancel_event,
        )
        inputs = {name: _input(name, meta) for name, meta in run.get("inputs", {}).items()}
        prev = run.get("previous")
        if prev is not None:
            ctx.previous = PreviousFrame(
                inputs={n: _input(n, m) for n, m in prev["inputs"].items()},
                outputs={
                    o["name"]: _input(o["name"], {**o, "kind": "array"}) for o in prev["outputs"]
                },
            )
        try:
            outputs = self.engine(run["engine"]).run(run["task"], run["params"], inputs, ctx)
            ctx.check_cancelled()
            metas = [_store(out, Path(run["output_dir"]), frame) for out in outputs]
        except Cancelled:
            self.send("cancelled", ids)
        except Yield as y:
            self.send("yielded", {**ids, "message": str(y)})
        except GenartError as exc:
            self.send("error", {**ids, "error": exc.to_dict()})
        except MemoryError as exc:
            self.send(
                "error",
                {**ids, "error": OutOfMemory(f"out of memory while generating: {exc}").to_dict()},
            )
        except Exception as exc:  # engine bugs: the traceback to the log, a message to the user
            log.error(
                "engine %s failed on job %s frame %s:\n%s",
                run["engine"],
                job,
                frame,
                traceback.format_exc(),
            )
            err = EngineFailed(f"the {run['engine']} engine failed: {type(exc).__name__}: {exc}")
            self.send("error", {**ids, "error": err.to_dict()})
        else:
            self.send(
                "done",
                {**ids, "outputs": metas, "warnings": ctx.warnings, "memory": memory_info()},
            )
        finally:
            self.current_job = None


def memory_info() -> dict[str, Any]:
    """The engine device's memory, as far as it is known without loading torch."""
    info: dict[str, Any] = {
        "device": os.environ.get("GENART_DEVICE", "auto"),
        "free": None,
        "total": None,
    }
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            info.update(
                device="cuda",
                free=int(free),
                total=int(total),
                allocated=int(torch.cuda.memory_allocated()),
            )
    return info


def _input(name: str, meta: dict[str, Any]) -> Input:
    """An input (or a stored output) record as the engines read it."""
    return Input(
        name=name,
        kind=meta["kind"],
        path=Path(meta["file"]),
        dtype=meta.get("dtype"),
        shape=tuple(meta["shape"]) if meta.get("shape") else None,
        color_space=meta.get("color_space"),
        encoding=meta.get("encoding"),
    )


def _attachment(out: Output) -> Attachment:
    return Attachment.array(out.name, out.data, out.dtype, out.shape, out.color_space)


def _store(out: Output, folder: Path, frame: int) -> dict[str, Any]:
    """Writes one output atomically; returns what the server records about it."""
    att = _attachment(out)  # validates dtype/shape against the bytes
    view = att.view()
    path = folder / f"{frame:06d}_{out.name}.bin"
    atomic_write(path, [view])
    return {
        "name": out.name,
        "file": str(path),
        "dtype": out.dtype,
        "shape": list(out.shape),
        "color_space": out.color_space,
        "nbytes": view.nbytes,
        "sha256": hashlib.sha256(view).hexdigest(),
    }


def die_with(server_pid: int) -> None:
    """Ends this worker when the server process is gone, whatever the engine is doing.

    Stdin's end of file is the portable signal, but a reader thread cannot see it while an
    engine holds the GIL; on Linux the kernel's parent-death signal kills us regardless.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if not pid_alive(server_pid) or os.getppid() != server_pid:
        os._exit(0)  # the server died before we could ask to follow it

    def watch() -> None:
        while pid_alive(server_pid):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="server-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genart-worker")
    parser.add_argument("--test-engines", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("--allow-pickle", action="store_true")
    parser.add_argument(
        "--memory", default="", help="comma list: attention_slicing, vae_tiling, cpu_offload"
    )
    parser.add_argument("--server-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.server_pid:
        die_with(args.server_pid)
    # Engines read these (genart_core.engines.device, sd.loading).
    os.environ["GENART_DEVICE"] = args.device
    os.environ["GENART_ALLOW_PICKLE"] = "1" if args.allow_pickle else "0"
    os.environ["GENART_MEMORY"] = args.memory
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s",
    )
    # Keep the protocol channel private: anything printed by libraries goes to stderr.
    proto_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    rfile = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    started = time.monotonic()
    try:
        engines = available_engines(test_engines=args.test_engines)
    except Exception as exc:
        raise InternalError(f"cannot load engines: {exc}") from exc
    log.info("worker ready in %.2f s with engines %s", time.monotonic() - started, list(engines))
    Worker(rfile, proto_out, engines).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
