"""`genart`: talk to a running sidecar from a terminal or a farm script.

    genart [--connection-file PATH] status | jobs [--state S] | events JOB [--since N]
           | wait JOB | cancel JOB | submit ENGINE [-p NAME=VALUE ...] [--wait] | shutdown
           | generate [--model M] --prompt P [...] --out FILE
           | convert taming SRC.ckpt|.safetensors DST_FOLDER [--config taming.yaml]
           | train diffusion|vqgan|controlnet --out FOLDER --steps N [...]

It uses the same stdlib client as the Blender add-on. Exit codes: 0 success, 1 a job
failed or was cancelled, 2 bad usage, 3 the sidecar cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import generate
from .protocol import Client, Event, default_state_dir
from .protocol.errors import ConnectionLost, GenartError, JobCancelled, SidecarUnresponsive


def _connection_file(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("GENART_CONNECTION_FILE")
    return Path(env) if env else default_state_dir() / "connection.json"


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string


def _print_event(ev: Event) -> None:
    if ev.type == "progress":
        d = ev.data
        eta = f", eta {d['eta']:.1f} s" if d.get("eta") is not None else ""
        frames = f" frame {d['frame'] + 1}/{d['frames']}" if d.get("frames") else ""
        print(f"[{ev.job}]{frames} step {d['step']}/{d['steps']}{eta}", flush=True)
    elif ev.type != "preview":
        print(f"[{ev.job}] {ev.type} {json.dumps(ev.data)}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genart", description=__doc__.split("\n")[0])
    p.add_argument(
        "--connection-file",
        type=Path,
        default=None,
        help="the sidecar's connection file (default: GENART_CONNECTION_FILE or "
        "the state dir's connection.json)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="version, device, engines and queue of the sidecar")
    jobs = sub.add_parser("jobs", help="list recent jobs")
    jobs.add_argument("--state", default=None)
    events = sub.add_parser("events", help="print a job's events")
    events.add_argument("job")
    events.add_argument("--since", type=int, default=0)
    for name in ("wait", "cancel"):
        sub.add_parser(name, help=f"{name} a job").add_argument("job")
    submit = sub.add_parser("submit", help="submit a job (parameters as NAME=VALUE)")
    submit.add_argument("engine")
    submit.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    submit.add_argument("--task", default=None)
    submit.add_argument("--wait", action="store_true", help="follow the job to its end")
    sub.add_parser("shutdown", help="stop the sidecar")
    models = sub.add_parser("models", help="models on the sidecar's machine (cache, folders)")
    models.add_argument("--no-hash", action="store_true", help="skip content hashes (fast)")
    gen = sub.add_parser(
        "generate",
        help="generate one image and write it (starts a sidecar for the call when none is running)",
    )
    generate.add_arguments(gen)
    sub.add_parser(
        "train",
        help="train a micro model on this machine (no sidecar): "
        "genart train diffusion|vqgan|controlnet -h",
        add_help=False,
    )
    conv = sub.add_parser(
        "convert", help="convert a checkpoint into a diffusers folder (no sidecar needed)"
    )
    conv_sub = conv.add_subparsers(dest="format", required=True)
    taming = conv_sub.add_parser(
        "taming",
        help="a taming-transformers VQGAN (.ckpt read with weights_only, or .safetensors) "
        "to a diffusers VQModel folder",
    )
    taming.add_argument("source", type=Path, help="the taming checkpoint")
    taming.add_argument("destination", type=Path, help="the folder to write (new or empty)")
    taming.add_argument(
        "--config",
        type=Path,
        default=None,
        help="taming's model YAML (default: read the architecture off the tensor shapes)",
    )
    return p


def _convert(args: argparse.Namespace) -> int:
    from .engines.vqgan.convert import convert_taming

    try:
        cfg = convert_taming(args.source, args.destination, args.config)
    except GenartError as exc:
        print(f"genart: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.destination}: VQModel, {len(cfg['block_out_channels'])} levels "
        f"(f={2 ** (len(cfg['block_out_channels']) - 1)}), {cfg['num_vq_embeddings']} codes "
        f"of {cfg['vq_embed_dim']} dims"
    )
    return 0


def _follow(client: Client, job: str) -> int:
    try:
        client.wait(job, _print_event)
    except JobCancelled:
        return 1
    except GenartError as exc:
        if isinstance(exc, (ConnectionLost, SidecarUnresponsive)):
            raise
        print(f"genart: job {job} failed: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace, client: Client) -> int:
    if args.command == "status":
        w = client.welcome
        print(
            f"sidecar {w['server']['version']} (protocol {w['protocol_version']}, "
            f"pid {w['pid']}) on {w['device']}"
        )
        for eng in w["engines"]:
            print(f"  engine {eng['name']} {eng['version']}: {', '.join(eng['tasks'])}")
        ping = client.ping()
        print(f"  jobs: {json.dumps(ping['jobs'])}")
        mem = ping.get("memory") or {}
        if mem.get("total"):
            used = (mem["total"] - mem["free"]) / 2**30
            print(
                f"  {mem.get('device')} memory: {used:.1f} of {mem['total'] / 2**30:.1f} GiB "
                f"used, models {mem.get('state')}"
            )
        else:
            print(
                f"  device memory: not reported on {mem.get('device', 'this device')}, "
                f"models {mem.get('state', 'unknown')}"
            )
    elif args.command == "jobs":
        for job in client.list_jobs(state=args.state):
            frames = job["frames"]
            print(
                f"{job['job']}  {job['state']:<10} {job['engine']:<8} {job['task']:<8} "
                f"{frames['committed']}/{frames['expected'] or frames['received']} frames"
            )
    elif args.command == "events":
        for ev in client.events(args.job, since=args.since):
            _print_event(ev)
    elif args.command == "wait":
        return _follow(client, args.job)
    elif args.command == "cancel":
        print(client.cancel(args.job)["state"])
    elif args.command == "submit":
        params = {}
        for item in args.param:
            name, sep, value = item.partition("=")
            if not sep:
                print(f"genart: --param wants NAME=VALUE, not {item!r}", file=sys.stderr)
                return 2
            params[name] = _value(value)
        job_id = client.submit(args.engine, params, task=args.task)
        print(job_id, flush=True)
        if args.wait:
            return _follow(client, job_id)
    elif args.command == "shutdown":
        client.shutdown()
    elif args.command == "models":
        reply = client.call("models", {"hash": not args.no_hash}, timeout=3600).result
        for e in reply["models"]:
            digest = (e["sha256"] or "-")[:12]
            print(
                f"{e['family']:<7} {e['kind']:<10} {e['size'] / 2**20:9.1f} MiB  {digest}  "
                f"{e['id']}"
            )
        print(
            f"({len(reply['models'])} models; searched {reply['hf_cache']} and "
            f"{', '.join(reply['roots']) or 'no --models folders'})"
        )
    elif args.command == "generate":
        return generate.generate(args, client)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # offline, its own options
        from .micro.train_cli import main as train

        return train(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "convert":  # offline: no sidecar involved
        return _convert(args)
    path = _connection_file(args.connection_file)
    if args.command == "generate" and args.connection_file is None and not path.exists():
        try:
            with generate.private_sidecar() as conn:
                return _session(args, conn)
        except GenartError as exc:
            print(f"genart: {exc}", file=sys.stderr)
            return 3
    return _session(args, path)


def _session(args: argparse.Namespace, path: Path) -> int:
    try:
        client = Client.connect(path, client_name="genart-cli")
    except (OSError, ValueError, GenartError) as exc:
        print(
            f"genart: cannot reach the sidecar through {path}: {exc}\n"
            "Start one with `genart-sidecar` or pass --connection-file.",
            file=sys.stderr,
        )
        return 3
    try:
        return run(args, client)
    except (ConnectionLost, SidecarUnresponsive) as exc:
        print(f"genart: {exc}", file=sys.stderr)
        return 3
    except GenartError as exc:
        print(f"genart: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
