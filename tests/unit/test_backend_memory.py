"""MemoryBackend: byte-exact storage for tests and benchmarks."""

from __future__ import annotations

import pytest

from pyscsit.backends.base import BackendError
from pyscsit.backends.memory import MemoryBackend


async def test_write_read_and_copy_semantics() -> None:
    b = MemoryBackend(8192)
    await b.write(100, memoryview(b"hello"))
    got = await b.read(100, 5)
    assert got == b"hello"
    await b.write(100, b"HELLO")
    assert got == b"hello"  # data already handed out is not changed by later writes
    assert b.size == 8192 and b.locator.startswith("memory:")


async def test_unmap_zeroes_and_read_only() -> None:
    b = MemoryBackend(4096)
    await b.write(0, b"\xff" * 4096)
    await b.unmap(512, 1024)
    data = await b.read(0, 4096)
    assert data[512:1536] == bytes(1024) and data[:512] == b"\xff" * 512
    ro = MemoryBackend(4096, read_only=True)
    with pytest.raises(BackendError):
        await ro.write(0, b"x")
    assert not ro.supports_unmap


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryBackend(0)
