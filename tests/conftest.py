"""Shared fixtures: real sidecar subprocesses on real sockets, and a per-marker time report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genart_core.protocol import Client, ConnectionInfo

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("process", "blender", "slow", "gpu")


class SidecarProcess:
    """A `genart-sidecar` subprocess with the test engines, on its own state dir."""

    def __init__(
        self, state_dir: Path, extra: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.extra = list(extra or [])
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.connection_file = state_dir / "connection.json"

    def start(self, timeout: float = 30.0) -> SidecarProcess:
        try:
            self.connection_file.unlink()
        except FileNotFoundError:
            pass
        cmd = [
            sys.executable,
            "-m",
            "sidecar",
            "--state-dir",
            str(self.state_dir),
            "--enable-test-engines",
            *self.extra,
        ]
        env = None if self.env is None else {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {out}")
            if self.connection_file.exists():
                try:
                    info = ConnectionInfo.read(self.connection_file)
                except (ValueError, OSError):
                    info = None
                if info is not None and info.pid == self.proc.pid:
                    return self
            time.sleep(0.02)
        raise RuntimeError("sidecar did not start in time")

    @property
    def info(self) -> ConnectionInfo:
        return ConnectionInfo.read(self.connection_file)

    def connect(self, **kwargs: Any) -> Client:
        return Client.connect(self.connection_file, **kwargs)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def worker_pids(self) -> list[int]:
        """Pids of this sidecar's engine workers (children running sidecar.worker)."""
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid), "-f", "sidecar.worker"],
            capture_output=True,
            text=True,
        )
        return [int(p) for p in out.stdout.split()]

    def log_text(self) -> str:
        logs = self.state_dir / "logs"
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """One sidecar subprocess for a whole test module."""
    sc = SidecarProcess(tmp_path_factory.mktemp("state")).start()
    yield sc
    sc.stop()


@pytest.fixture
def fresh_sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    """A sidecar of the test's own, for tests that kill or stop it."""
    sc = SidecarProcess(tmp_path / "state").start()
    yield sc
    sc.kill()


@pytest.fixture
def client(sidecar: SidecarProcess) -> Iterator[Client]:
    c = sidecar.connect()
    yield c
    c.close()


# -- time per marker -----------------------------------------------------------------
_durations: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    start = time.perf_counter()
    yield
    spent = time.perf_counter() - start
    names = [m for m in MARKERS if item.get_closest_marker(m) is not None] or ["unmarked"]
    for name in names:
        _durations[name] += spent
        _counts[name] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("time per marker")
    for name in (*MARKERS, "unmarked"):
        terminalreporter.write_line(
            f"{name:>9}: {_counts.get(name, 0):4d} tests, {_durations.get(name, 0.0):8.1f} s"
        )
    report = os.environ.get("GENART_MARKER_TIMES")
    if report:
        Path(report).write_text(json.dumps({"durations": _durations, "counts": _counts}))
