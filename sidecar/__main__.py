"""`genart-sidecar`: start the sidecar server.

    genart-sidecar [--socket PATH | --tcp HOST:PORT [--allow-remote]]
                   [--state-dir DIR] [--connection-file PATH] [--parent-pid PID]

The token is generated here (or read from the GENART_SIDECAR_TOKEN environment variable)
and written only to the 0600 connection file, never to a command line. Exit codes: 0 after
a clean stop, 2 for bad arguments, 3 when another sidecar already holds the state dir.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path

from genart_core.protocol.connection import Address, default_state_dir
from genart_core.protocol.errors import GenartError, StateDirLocked

from .server import Sidecar, SidecarConfig

EXIT_LOCKED = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genart-sidecar", description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", metavar="PATH", help="Unix socket path (default: in the state dir)"
    )
    where.add_argument("--tcp", metavar="HOST:PORT", help="TCP address; port 0 picks a free port")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a TCP address other than loopback (serves other machines)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="per-user state dir on local disk (default: GENART_STATE_DIR or the platform's"
        " per-user state folder)",
    )
    p.add_argument(
        "--connection-file",
        type=Path,
        default=None,
        help="where to write the 0600 connection file (default: STATE_DIR/connection.json)",
    )
    p.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process is gone (Blender's pid)",
    )
    p.add_argument(
        "--max-store-mb",
        type=int,
        default=10240,
        help="cap on stored inputs and outputs; older finished jobs are collected",
    )
    p.add_argument(
        "--cancel-grace",
        type=float,
        default=3.0,
        help="seconds an engine gets to stop after cancel before its worker is killed",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cuda", "mps", "cpu"],
        help="where engines run (auto: CUDA fp16 > MPS fp16 > CPU fp32)",
    )
    p.add_argument(
        "--models",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of models (diffusers folders, .safetensors files); repeatable",
    )
    p.add_argument(
        "--attention-slicing",
        action="store_true",
        help="compute attention in slices: less memory, a little slower",
    )
    p.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile")
    p.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep models in RAM and stream each layer to the GPU (slow, smallest VRAM)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle checkpoints (.ckpt/.pt/.bin); they can run arbitrary code",
    )
    p.add_argument(
        "--hello-timeout",
        type=float,
        default=10.0,
        help="seconds a new connection has to authenticate before it is closed",
    )
    p.add_argument(
        "--enable-test-engines",
        action="store_true",
        help="offer the fake test engine and fault injection (tests only)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _setup_logging(state_dir: Path, level: str) -> None:
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        state_dir / "logs" / "sidecar.log", maxBytes=10 * 2**20, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s sidecar[%(process)d] %(threadName)s %(levelname)s %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir = (args.state_dir or default_state_dir()).expanduser().resolve()
    address = None
    if args.socket:
        address = Address("unix", path=str(Path(args.socket).expanduser().resolve()))
    elif args.tcp:
        address = Address.parse("tcp:" + args.tcp)
        if address.transport != "tcp":
            print(f"genart-sidecar: --tcp wants HOST:PORT, not {args.tcp!r}", file=sys.stderr)
            return 2
    _setup_logging(state_dir, args.log_level)
    config = SidecarConfig(
        state_dir=state_dir,
        address=address,
        connection_file=args.connection_file,
        parent_pid=args.parent_pid,
        allow_remote=args.allow_remote,
        test_engines=args.enable_test_engines,
        max_store_bytes=args.max_store_mb * 2**20,
        cancel_grace=args.cancel_grace,
        hello_timeout=args.hello_timeout,
        device=args.device,
        allow_pickle=args.allow_pickle,
        model_roots=tuple(p.expanduser() for p in args.models),
        memory=tuple(
            name
            for name, on in (
                ("attention_slicing", args.attention_slicing),
                ("vae_tiling", args.vae_tiling),
                ("cpu_offload", args.cpu_offload),
            )
            if on
        ),
        token=os.environ.pop("GENART_SIDECAR_TOKEN", None),
    )
    sidecar = Sidecar(config)
    try:
        sidecar.start()
    except StateDirLocked as exc:
        print(f"genart-sidecar: {exc.message}", file=sys.stderr)
        return EXIT_LOCKED
    except GenartError as exc:
        print(f"genart-sidecar: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sidecar.request_stop())
    print(
        f"genart-sidecar ready on {sidecar.address} (connection file {sidecar.connection_file})",
        flush=True,
    )
    while not sidecar.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
