"""Crashes and restarts of a real sidecar: nothing committed is lost, nothing torn is served,
unfinished work resumes; the state dir lock, the parent watchdog, shutdown and GC."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SidecarProcess

from genart_core.engines.fake import fake_image
from genart_core.protocol import Client, ConnectionInfo
from genart_core.protocol.errors import ConnectionLost, ResultExpired

pytestmark = pytest.mark.process
KILLS = 50


def wait_for(pred, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def check_frames(client: Client, job: str, n: int, size: int, seed: int) -> None:
    """Every frame is committed, whole, and equal to what the engine makes for it."""
    for i in range(n):
        reply = client.result(job, i)
        data = bytes(reply.attachments["image"].data)
        assert data == bytes(fake_image(size, size, seed, i)), f"frame {i} differs"
        assert hashlib.sha256(data).hexdigest() == reply.result["outputs"][0]["sha256"]


def test_sigkill_mid_job_then_restart_loses_nothing(fresh_sidecar: SidecarProcess) -> None:
    sc = fresh_sidecar
    with sc.connect() as c:
        done = c.submit("fake", {"steps": 1, "seed": 1})
        c.wait(done, timeout=30)
        busy = c.submit("fake", {"steps": 50, "step_seconds": 0.05, "seed": 2})
        seen = []
        while not any(e.type == "progress" and e.job == busy for e in seen):
            ev = c.next_event(timeout=10)
            assert ev is not None
            seen.append(ev)
        mark = max(e.seq for e in seen)
        sc.kill()
        with pytest.raises(ConnectionLost):
            c.ping()
    sc.start()
    with sc.connect() as c:
        # The finished job's result is served again, the same bytes.
        assert bytes(c.result(done).attachments["image"].data) == bytes(fake_image(64, 64, 1, 0))
        # The interrupted job was re-queued and finishes; the client continues from its seq.
        rest = []
        last = c.wait(busy, rest.append, since=mark, timeout=60)
        assert last.type == "completed"
        assert rest[0].type == "queued" and rest[0].data == {"recovered": True}
        assert bytes(c.result(busy).attachments["image"].data) == bytes(fake_image(64, 64, 2, 0))
        history = c.events(busy)
        assert sum(e.terminal for e in history) == 1


def test_worker_killed_from_outside_counts_a_crash_and_retries(
    fresh_sidecar: SidecarProcess,
) -> None:
    sc = fresh_sidecar
    with sc.connect() as c:
        job = c.submit("fake", {"steps": 40, "step_seconds": 0.05, "seed": 3})
        wait_for(lambda: c.status(job)["state"] == "running", what="job start")
        (pid,) = sc.worker_pids()
        os.kill(pid, 9)
        assert c.wait(job, timeout=60).type == "completed"
        assert bytes(c.result(job).attachments["image"].data) == bytes(fake_image(64, 64, 3, 0))
    assert "died" in sc.log_text()


@pytest.mark.slow
def test_fifty_sigkills_mid_sequence_lose_and_corrupt_no_frame(tmp_path: Path) -> None:
    """The fault soak (DESIGN §8): SIGKILL the sidecar 50 times mid-sequence."""
    sc = SidecarProcess(tmp_path / "state").start()
    rng = random.Random(1234)
    frames, size, seed = 120, 96, 7
    try:
        with sc.connect() as c:
            job = c.submit(
                "fake",
                {"steps": 4, "step_seconds": 0.02, "width": size, "height": size, "seed": seed},
                sequence=True,
                frames=frames,
            )
            for i in range(frames):
                c.append(job, i)
            c.close_input(job)
        kills = 0
        committed_before: list[int] = []
        while kills < KILLS:
            time.sleep(rng.uniform(0.05, 0.4))
            sc.kill()
            kills += 1
            sc.start()
            with sc.connect() as c:
                status = c.status(job)
                committed_before.append(status["frames"]["committed"])
                if status["state"] == "completed":
                    break
        with sc.connect() as c:
            last = c.wait(job, timeout=120)
            assert last.type == "completed" and last.data["failed_frames"] == []
            assert last.data["frames"] == frames
            check_frames(c, job, frames, size, seed)
            assert sum(e.terminal for e in c.events(job)) == 1
        # Committed work never went backwards across kills.
        assert committed_before == sorted(committed_before)
        assert kills == KILLS, f"only {kills} kills happened before the sequence finished"
    finally:
        sc.kill()


def test_second_sidecar_on_the_same_state_dir_refuses(fresh_sidecar: SidecarProcess) -> None:
    sc = fresh_sidecar
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--state-dir",
            str(sc.state_dir),
            "--enable-test-engines",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 3
    assert f"pid {sc.proc.pid}" in out.stderr and str(sc.connection_file) in out.stderr
    with sc.connect() as c:  # the first one keeps serving, its connection file intact
        c.ping()


def test_lock_dies_with_a_killed_sidecar(fresh_sidecar: SidecarProcess) -> None:
    fresh_sidecar.kill()
    fresh_sidecar.start()  # no stale lock, no stale socket
    with fresh_sidecar.connect() as c:
        c.ping()


def test_parent_watchdog_stops_the_sidecar(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sc = SidecarProcess(tmp_path / "state", ["--parent-pid", str(parent.pid)]).start()
    try:
        parent.kill()
        parent.wait()
        assert sc.proc is not None
        sc.proc.wait(10)
        assert sc.proc.returncode == 0
        assert not sc.connection_file.exists()
    finally:
        sc.kill()


def test_shutdown_request_stops_cleanly(fresh_sidecar: SidecarProcess) -> None:
    sc = fresh_sidecar
    info = sc.info
    with sc.connect() as c:
        c.shutdown()
    assert sc.proc is not None
    sc.proc.wait(15)
    assert sc.proc.returncode == 0
    assert not sc.connection_file.exists()
    assert info.path is not None and not Path(info.path).exists()
    assert not sc.worker_pids()


def test_tcp_transport_and_remote_refusal(tmp_path: Path) -> None:
    sc = SidecarProcess(tmp_path / "tcp", ["--tcp", "127.0.0.1:0"]).start()
    try:
        info = sc.info
        assert info.transport == "tcp" and info.host == "127.0.0.1" and info.port
        with sc.connect() as c:
            job = c.submit("fake", {"steps": 1})
            assert c.wait(job, timeout=30).type == "completed"
    finally:
        sc.stop()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--state-dir",
            str(tmp_path / "remote"),
            "--tcp",
            "0.0.0.0:0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "--allow-remote" in out.stderr


def test_token_is_not_on_the_command_line(fresh_sidecar: SidecarProcess) -> None:
    token = ConnectionInfo.read(fresh_sidecar.connection_file).token
    assert len(token) == 64
    for pid in [fresh_sidecar.proc.pid, *fresh_sidecar.worker_pids()]:  # type: ignore[union-attr]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert token.encode() not in cmdline


def test_garbage_collection_under_a_size_cap(tmp_path: Path) -> None:
    sc = SidecarProcess(tmp_path / "state", ["--max-store-mb", "1"]).start()
    try:
        with sc.connect() as c:
            jobs = []
            for seed in range(4):  # 4 x 512x512x4 = 4 MiB of outputs, cap 1 MiB
                job = c.submit("fake", {"steps": 1, "width": 512, "height": 512, "seed": seed})
                c.wait(job, timeout=30)
                jobs.append(job)
            with pytest.raises(ResultExpired):
                c.result(jobs[0])
            assert c.status(jobs[0])["expired"] is True
            newest = c.result(jobs[-1]).attachments["image"]
            assert bytes(newest.data) == bytes(fake_image(512, 512, 3, 0))
        size = sum(p.stat().st_size for p in (sc.state_dir / "jobs").rglob("*") if p.is_file())
        assert size <= 2**20 + 512 * 512 * 4
    finally:
        sc.kill()


def test_a_silent_connection_is_closed_after_the_hello_timeout(tmp_path: Path) -> None:
    sc = SidecarProcess(tmp_path / "state", ["--hello-timeout", "0.5"]).start()
    try:
        idle = sc.info.address.connect()
        idle.settimeout(5)
        t0 = time.monotonic()
        assert idle.recv(1) == b""  # closed by the server, not by us
        assert 0.4 < time.monotonic() - t0 < 3
        idle.close()
        with sc.connect() as c:  # an authenticated one stays open past the timeout
            time.sleep(1.0)
            c.ping()
    finally:
        sc.kill()
