"""Job lifecycle through a real sidecar subprocess: events, results, sequences, cancel,
faults in the engine, several clients."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from genart_core.engines.fake import fake_image
from genart_core.protocol import Attachment, Client, Event
from genart_core.protocol.errors import (
    EngineFailed,
    InvalidParams,
    JobCancelled,
    JobNotFound,
    JobStateError,
    NotReady,
    OutOfMemory,
    WorkerCrashed,
)

pytestmark = pytest.mark.process


def collect(client: Client, job: str, **kwargs: object) -> tuple[Event, list[Event]]:
    seen: list[Event] = []
    last = client.wait(job, seen.append, raise_on_failure=False, timeout=60, **kwargs)
    return last, seen


def test_full_lifecycle_with_progress_previews_and_result(client: Client) -> None:
    job = client.submit("fake", {"width": 24, "height": 16, "steps": 8, "seed": 5})
    last, seen = collect(client, job)
    types = [e.type for e in seen]
    assert types[0] == "queued" and types[1] == "started", types
    assert last.type == "completed" and last.data == {"frames": 1, "failed_frames": []}
    progress = [e.data for e in seen if e.type == "progress"]
    assert [p["step"] for p in progress] == list(range(9))
    assert all(p["steps"] == 8 and p["frame"] == 0 and p["frames"] == 1 for p in progress)
    previews = [e for e in seen if e.type == "preview"]
    assert len(previews) == 2
    assert previews[0].attachment is not None and previews[0].attachment.shape == (8, 8, 4)
    results = [e for e in seen if e.type == "result"]
    assert len(results) == 1 and results[0].data["frame"] == 0
    assert types.index("result") < types.index("completed") == len(types) - 1
    seqs = [e.seq for e in seen if e.type != "preview"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    reply = client.result(job)
    image = reply.attachments["image"]
    assert image.shape == (16, 24, 4) and image.dtype == "uint8"
    assert bytes(image.data) == bytes(fake_image(24, 16, 5, 0))
    assert reply.result["outputs"][0]["sha256"]
    status = client.status(job)
    assert status["state"] == "completed" and status["frames"]["committed"] == 1


def test_img2img_input_reaches_the_engine(client: Client) -> None:
    src = bytes(fake_image(8, 4, 3, 0))
    job = client.submit(
        "fake",
        {"steps": 1},
        task="img2img",
        inputs={"image": Attachment.array("image", src, "uint8", (4, 8, 4), "srgb")},
    )
    client.wait(job, timeout=30)
    out = bytes(client.result(job).attachments["image"].data)
    expected = bytearray(255 - b for b in src)
    expected[3::4] = b"\xff" * 32
    assert out == bytes(expected)


def test_sequence_frames_stream_in_and_results_commit_one_by_one(client: Client) -> None:
    job = client.submit("fake", {"steps": 2, "width": 8, "height": 8}, sequence=True, frames=4)
    client.append(job, 0, params={"seed": 10})
    # A frame's result can be fetched as soon as it commits, before the sequence ends.
    deadline = time.monotonic() + 20
    while client.status(job)["frames"]["committed"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first = client.result(job, 0).attachments["image"]
    assert bytes(first.data) == bytes(fake_image(8, 8, 10, 0))
    for i in range(1, 4):
        client.append(job, i, params={"seed": 10 + i})
    assert client.append(job, 1)["duplicate"] is True  # a resend is harmless
    with pytest.raises(InvalidParams) as exc:
        client.append(job, 4)  # frames=4: indices 0..3
    assert exc.value.field == "frame"
    client.close_input(job)
    last, seen = collect(client, job)
    assert last.type == "completed" and last.data["frames"] == 4
    assert sorted(e.data["frame"] for e in seen if e.type == "result") == [0, 1, 2, 3]
    for i in range(4):
        img = client.result(job, i).attachments["image"]
        assert bytes(img.data) == bytes(fake_image(8, 8, 10 + i, i)), i
    # A resend after the end (a client that reconnected) is still harmless.
    assert client.append(job, 0)["duplicate"] is True


def test_append_after_close_is_refused(client: Client) -> None:
    job = client.submit("fake", {"steps": 1}, sequence=True)
    client.append(job, 0)
    client.close_input(job)
    with pytest.raises(JobStateError) as exc:
        client.append(job, 1)
    assert exc.value.field == "job"
    client.wait(job, timeout=30)


def test_cancel_takes_effect_within_one_step(client: Client) -> None:
    job = client.submit("fake", {"steps": 200, "step_seconds": 0.1})
    events: list[Event] = []
    while not any(e.type == "progress" and e.data["step"] >= 2 for e in events):
        ev = client.next_event(timeout=10)
        assert ev is not None
        events.append(ev)
    asked = time.monotonic()
    assert client.cancel(job)["state"] == "cancelling"
    with pytest.raises(JobCancelled):
        client.wait(job, events.append, timeout=10)
    assert time.monotonic() - asked < 2.0  # one step is 0.1 s; slack for a loaded machine
    steps_after = [e.data["step"] for e in events if e.type == "progress"]
    assert max(steps_after) <= 2 + 2  # the step running at cancel, maybe one report more
    time.sleep(0.3)
    history = client.events(job)
    assert [e.type for e in history].count("cancelled") == 1
    assert sum(e.type in ("completed", "failed", "cancelled") for e in history) == 1
    assert client.cancel(job)["state"] == "cancelled"  # again: same answer, no new event
    assert len(client.events(job)) == len(history)


@pytest.mark.parametrize("mode", ["hang", "gil"])
def test_cancel_kills_and_restarts_a_worker_that_does_not_yield(
    sidecar: object, client: Client, mode: str
) -> None:
    job = client.submit("fake", {"steps": 10, "mode": mode})
    while True:
        ev = client.next_event(timeout=10)
        assert ev is not None
        if ev.job == job and ev.type == "progress":
            break
    time.sleep(0.3)  # the engine is now stuck in its fault
    old = sidecar.worker_pids()  # type: ignore[attr-defined]
    # The server answers while the engine sleeps or holds its GIL: it is another process.
    t0 = time.monotonic()
    client.ping()
    assert time.monotonic() - t0 < 1.5  # answered while the engine is stuck
    assert client.cancel(job)["state"] == "cancelling"
    with pytest.raises(JobCancelled):
        client.wait(job, timeout=15)
    assert time.monotonic() - t0 < 3.0 + 4.0  # grace period + restart slack
    history = client.events(job)
    assert history[-1].type == "cancelled" and history[-1].data.get("worker_restarted")
    # A new worker serves the next job.
    nxt = client.submit("fake", {"steps": 1})
    assert client.wait(nxt, timeout=30).type == "completed"
    assert sidecar.worker_pids() != old  # type: ignore[attr-defined]


def test_cancel_of_a_queued_job_is_immediate(client: Client) -> None:
    running = client.submit("fake", {"steps": 400, "step_seconds": 0.05})  # outlives a loaded CI
    queued = client.submit("fake", {"steps": 1})
    assert client.cancel(queued)["state"] == "cancelled"
    assert client.status(queued)["state"] == "cancelled"
    with pytest.raises(JobStateError):
        client.result(queued)
    client.cancel(running)
    with pytest.raises(JobCancelled):
        client.wait(running, timeout=10)


@pytest.mark.parametrize(
    ("mode", "error", "field"),
    [
        ("fail", EngineFailed, "params.mode"),
        ("oom", OutOfMemory, None),
        ("bug", EngineFailed, None),
    ],
)
def test_engine_errors_are_typed_and_clean(
    sidecar: object, client: Client, mode: str, error: type, field: str | None
) -> None:
    job = client.submit("fake", {"steps": 3, "mode": mode})
    with pytest.raises(error) as exc:
        client.wait(job, timeout=30)
    assert exc.value.field == field
    assert "Traceback" not in exc.value.message
    assert client.status(job)["state"] == "failed"
    with pytest.raises(error):
        client.result(job)
    if mode == "bug":  # the traceback went to the log, not to the client
        assert "ZeroDivisionError" in exc.value.message
        assert "Traceback" in sidecar.log_text()  # type: ignore[attr-defined]


def test_a_crash_is_retried_and_a_frame_that_crashes_twice_fails(client: Client) -> None:
    once = client.submit("fake", {"steps": 2, "mode": "crash", "fault_attempts": 1, "seed": 2})
    assert client.wait(once, timeout=30).type == "completed"
    assert bytes(client.result(once).attachments["image"].data) == bytes(fake_image(64, 64, 2, 0))

    always = client.submit("fake", {"steps": 2, "mode": "crash"})
    with pytest.raises(WorkerCrashed) as exc:
        client.wait(always, timeout=30)
    assert exc.value.details["frame"] == 0

    # In a sequence the crashing frame fails and the rest goes on.
    seq = client.submit(
        "fake", {"steps": 1, "mode": "crash", "fault_frames": [1]}, sequence=True, frames=3
    )
    for i in range(3):
        client.append(seq, i)
    client.close_input(seq)
    last, seen = collect(client, seq)
    assert last.type == "completed" and last.data == {"frames": 2, "failed_frames": [1]}
    assert [e.data["frame"] for e in seen if e.type == "frame_failed"] == [1]
    with pytest.raises(WorkerCrashed):
        client.result(seq, 1)
    assert client.result(seq, 2).attachments["image"].shape == (64, 64, 4)


def test_idempotency_key_dedupes_a_resubmit(client: Client) -> None:
    a = client.call(
        "submit", {"engine": "fake", "params": {"steps": 1}, "idempotency_key": "k-1"}
    ).result
    b = client.call(
        "submit", {"engine": "fake", "params": {"steps": 1}, "idempotency_key": "k-1"}
    ).result
    assert a["job"] == b["job"] and a["deduplicated"] is False and b["deduplicated"] is True
    client.wait(a["job"], timeout=30)


def test_two_clients_at_once(sidecar: object) -> None:
    results: dict[str, object] = {}

    def run(name: str, seed: int) -> None:
        with sidecar.connect() as c:  # type: ignore[attr-defined]
            job = c.submit("fake", {"steps": 4, "seed": seed, "step_seconds": 0.02})
            last, seen = collect(c, job)
            results[name] = (
                last.type,
                {e.job for e in seen},
                bytes(c.result(job).attachments["image"].data),
                job,
            )

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", 1), ("b", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, seed in (("a", 1), ("b", 2)):
        state, jobs, data, job = results[name]  # type: ignore[misc]
        assert state == "completed" and jobs == {job}
        assert data == bytes(fake_image(64, 64, seed, 0))


def test_another_client_can_watch_and_reconnect_from_a_seq(sidecar: object, client: Client) -> None:
    job = client.submit("fake", {"steps": 30, "step_seconds": 0.02})
    with sidecar.connect() as watcher:  # type: ignore[attr-defined]
        first = [e for e in watcher.events(job, watch=True)]
        assert first and first[0].type == "queued"
        ev = watcher.next_event(timeout=10)
        assert ev is not None and ev.job == job
        mark = max(e.seq for e in first)
    # "Reconnect": a new connection continues after the last seq it saw.
    with sidecar.connect() as again:  # type: ignore[attr-defined]
        rest: list[Event] = []
        last = again.wait(job, rest.append, since=mark, timeout=30)
        assert last.type == "completed"
        assert all(e.seq > mark for e in rest if e.type != "preview")
        assert not any(e.type == "queued" for e in rest)


def test_preview_list_status_and_unknown_job(client: Client) -> None:
    job = client.submit("fake", {"steps": 8})
    client.wait(job, timeout=30)
    preview = client.call("preview", {"job": job})
    assert preview.attachments["preview"].shape == (8, 8, 4)
    assert job in [j["job"] for j in client.list_jobs(state="completed")]
    with pytest.raises(JobNotFound) as exc:
        client.status("nope")
    assert exc.value.field == "job"
    seq = client.submit("fake", {"steps": 1}, sequence=True)
    with pytest.raises(NotReady):
        client.result(seq, 0)
    with pytest.raises(NotReady):
        client.call("preview", {"job": seq})
    client.cancel(seq)


def test_a_sequence_frame_sees_its_committed_previous_frame(client: Client) -> None:
    """Engines that carry state across frames (temporal coherence) get frame t-1's
    committed inputs and outputs from disk, so it holds across crashes too."""
    job = client.submit("fake", {"steps": 1, "width": 8, "height": 8, "report_previous": True},
                        sequence=True, frames=3)  # fmt: skip
    for i in range(3):
        client.append(job, i, params={"seed": i})
    client.close_input(job)
    events: list[Event] = []
    client.wait(job, events.append, timeout=30)
    warned = {e.data["frame"]: e.data["warnings"] for e in events if e.type == "result"}
    assert warned[0] == []
    for t in (1, 2):
        prev = client.result(job, t - 1).attachments["image"]
        assert warned[t] == [
            f"previous image sha256 {hashlib.sha256(bytes(prev.data)).hexdigest()}"
        ]
