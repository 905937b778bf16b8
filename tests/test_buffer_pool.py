"""The receive-buffer pool reuses a large buffer only when nothing else refers to it."""

from __future__ import annotations

import socket
import threading

import numpy as np

from genart_core.protocol.framing import LARGE_ATTACHMENT, Attachment, BufferPool, FrameStream

N = 2 * LARGE_ATTACHMENT


def test_a_held_buffer_is_never_handed_out_again() -> None:
    pool = BufferPool()
    a = pool.get(N)
    b = pool.get(N)
    assert a is not b  # `a` is still held
    view = memoryview(b)
    del b
    c = pool.get(N)
    assert c is not view.obj  # a memoryview still refers to it
    arr = np.frombuffer(c, dtype=np.uint8)
    del c
    d = pool.get(N)
    assert d is not arr.base  # a numpy array still refers to it
    del a
    e = pool.get(N)
    assert e is pool._bufs[0][0]  # `a` was released: reused


def test_small_buffers_and_caps() -> None:
    pool = BufferPool(max_buffers=2, max_bytes=3 * N)
    assert isinstance(pool.get(100), bytearray) and not pool._bufs
    held = [pool.get(N) for _ in range(3)]
    assert len(pool._bufs) == 2 and len(held) == 3


def test_received_attachments_survive_the_next_message() -> None:
    """Data a caller keeps from one message is not overwritten by the next one."""
    left, right = socket.socketpair()
    try:
        out, inp = FrameStream(left), FrameStream(right)
        kept = []
        for value in (1, 2, 3):
            payload = bytes([value]) * N
            att = Attachment.blob("x", payload, "raw")
            t = threading.Thread(target=out.write_message, args=({"n": value}, [att]))
            t.start()
            msg = inp.read_message()
            t.join()
            kept.append(msg.attachments[0].data)
        assert [bytes(k[:1]) for k in kept] == [b"\x01", b"\x02", b"\x03"]
        assert all(bytes(k) == bytes([i + 1]) * N for i, k in enumerate(kept))
    finally:
        left.close()
        right.close()
