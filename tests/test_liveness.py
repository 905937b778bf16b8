"""A hung sidecar is detected by the client's pings within 6 s; a killed one at once; a busy
engine (sleeping or holding its GIL) never makes the sidecar look hung. Both client forms."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import SidecarProcess

from genart_core.protocol import ThreadedClient
from genart_core.protocol.errors import ConnectionLost, SidecarUnresponsive

pytestmark = pytest.mark.process
DETECT_WITHIN = 6.0


def wait_state(client: ThreadedClient, states: tuple[str, ...], timeout: float) -> float:
    """Seconds until the client reaches one of `states` (drains its event queue)."""
    start = time.monotonic()
    while client.state not in states:
        assert time.monotonic() - start < timeout, f"still {client.state} after {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_stopped_sidecar_is_detected_by_both_clients(fresh_sidecar: SidecarProcess) -> None:
    sc = fresh_sidecar
    threaded = ThreadedClient(sc.connection_file).start()
    assert threaded.ready.wait(10) and threaded.state == "ready"
    blocking = sc.connect()
    job = blocking.submit("fake", {"steps": 1000, "step_seconds": 0.05})
    assert sc.proc is not None
    os.kill(sc.proc.pid, signal.SIGSTOP)  # hung: alive, silent
    try:
        start = time.monotonic()
        with pytest.raises(SidecarUnresponsive):
            blocking.wait(job, timeout=30)
        assert time.monotonic() - start <= DETECT_WITHIN
        assert wait_state(threaded, ("unresponsive",), DETECT_WITHIN + 1) <= DETECT_WITHIN
        events = threaded.poll()
        assert any(e.type == "connection" and e.data["state"] == "unresponsive" for e in events)
        # Pending requests fail instead of hanging forever.
        assert isinstance(threaded.request("ping").exception(1), ConnectionLost)
    finally:
        os.kill(sc.proc.pid, signal.SIGCONT)
        threaded.close()


@pytest.mark.parametrize("mode", ["sleep", "gil"])
def test_hung_server_process_is_detected(fresh_sidecar: SidecarProcess, mode: str) -> None:
    """The server itself stalls: stuck on a lock (sleep) or a GIL-holding C call."""
    sc = fresh_sidecar
    threaded = ThreadedClient(sc.connection_file).start()
    assert threaded.ready.wait(10)
    trigger = sc.connect()
    trigger.stream.write_message(
        {
            "jsonrpc": "2.0",
            "id": 99,
            "method": "debug.hang",
            "params": {"mode": mode, "seconds": 12},
        }
    )
    start = time.monotonic()
    with pytest.raises(SidecarUnresponsive):
        trigger.call("ping", timeout=None)
    assert time.monotonic() - start <= DETECT_WITHIN
    assert wait_state(threaded, ("unresponsive",), DETECT_WITHIN + 1) <= DETECT_WITHIN


@pytest.mark.parametrize("mode", ["hang", "gil"])
def test_busy_engine_does_not_look_hung(fresh_sidecar: SidecarProcess, mode: str) -> None:
    sc = fresh_sidecar
    threaded = ThreadedClient(sc.connection_file, ping_interval=1.0).start()
    assert threaded.ready.wait(10)
    with sc.connect() as c:
        job = c.submit("fake", {"steps": 5, "mode": mode})
        time.sleep(0.5)
        assert c.status(job)["state"] == "running"
        time.sleep(4.0)  # past 3 missed pings at 1 s
        assert threaded.state == "ready"
        rtt = time.monotonic()
        threaded.call("ping", timeout=2)
        assert time.monotonic() - rtt < 0.5
        c.cancel(job)
    threaded.close()


def test_killed_sidecar_is_seen_at_once(fresh_sidecar: SidecarProcess) -> None:
    sc = fresh_sidecar
    threaded = ThreadedClient(sc.connection_file).start()
    assert threaded.ready.wait(10)
    sc.kill()
    assert wait_state(threaded, ("lost",), 2.0) < 0.5


def test_threaded_client_never_blocks_its_caller(tmp_path, fresh_sidecar: SidecarProcess) -> None:  # type: ignore[no-untyped-def]
    # Starting against nothing returns at once and reports the failure as an event.
    t0 = time.monotonic()
    nothing = ThreadedClient(fresh_sidecar.connection_file.parent / "missing.json").start()
    assert time.monotonic() - t0 < 0.05
    assert nothing.ready.wait(5) and nothing.state == "lost"
    assert "cannot reach" in nothing.state_reason

    client = ThreadedClient(fresh_sidecar.connection_file).start()
    assert client.ready.wait(10)
    assert client.welcome["engines"][0]["name"] == "fake"
    t0 = time.monotonic()
    fut = client.submit("fake", {"steps": 20, "step_seconds": 0.01})
    assert time.monotonic() - t0 < 0.05  # queued, not sent on the caller's thread
    job = fut.result(10).result["job"]
    seen = []
    deadline = time.monotonic() + 20
    while not any(e.type == "completed" for e in seen):
        assert time.monotonic() < deadline
        seen.extend(e for e in client.poll() if e.job == job)
        time.sleep(0.01)
    assert [e.type for e in seen][:2] == ["queued", "started"]
    assert sum(e.type == "progress" for e in seen) == 21
    client.close()
    assert client.state == "closed"


def test_a_worker_stuck_in_the_gil_dies_with_its_killed_server(
    fresh_sidecar: SidecarProcess,
) -> None:
    sc = fresh_sidecar
    with sc.connect() as c:
        job = c.submit("fake", {"steps": 5, "mode": "gil"})
        deadline = time.monotonic() + 10
        while c.status(job)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        (worker,) = sc.worker_pids()
    sc.kill()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{worker}") and _state(worker) != "Z":
        assert time.monotonic() < deadline, "the worker outlived its server"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]
    except OSError:
        return "gone"
