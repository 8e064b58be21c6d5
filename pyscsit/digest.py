"""CRC32C (Castagnoli) for iSCSI header and data digests (RFC 7143 §11.1, RFC 3720 B.4).

The fastest implementation present wins: the ``crc32c`` package (hardware SSE4.2/ARMv8,
zero-copy on memoryviews, ~25 GB/s here), then crcmod's C extension (~0.45 GB/s), then a
pure-Python table (~12 MB/s, only so that the server still works). The choice is checked at
import against the RFC 3720 B.4 vectors and named in ``IMPLEMENTATION``.

On the wire the digest is the CRC as a little-endian 32-bit word: B.4 shows 0x8a9136aa as
``aa 36 91 8a``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

Buffer = bytes | bytearray | memoryview

_POLY_REFLECTED = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY_REFLECTED if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def _crc32c_python(data: Buffer, crc: int = 0) -> int:
    c = crc ^ 0xFFFFFFFF
    table = _TABLE
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _pick() -> tuple[Callable[[Buffer, int], int], str]:
    try:
        import crc32c as _hw  # type: ignore[import-not-found,import-untyped,unused-ignore]

        def hw(data: Buffer, crc: int = 0) -> int:
            return int(_hw.crc32c(data, crc))

        return hw, f"crc32c ({'hardware' if getattr(_hw, 'hardware_based', False) else 'software'})"
    except ImportError:
        pass
    try:
        import crcmod.predefined  # type: ignore[import-not-found,import-untyped,unused-ignore]

        if getattr(crcmod, "_usingExtension", False):
            fn = crcmod.predefined.mkCrcFun("crc-32c")

            def cm(data: Buffer, crc: int = 0) -> int:
                return int(fn(data, crc))

            return cm, "crcmod (C extension)"
    except ImportError:
        pass
    return _crc32c_python, "pure Python (slow: install the crc32c package)"


crc32c, IMPLEMENTATION = _pick()

# RFC 3720 B.4 vectors: 32 bytes of zeros, of 0xff, ascending, descending.
_VECTORS = (
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
)
for _data, _want in _VECTORS:
    if crc32c(_data, 0) != _want:  # pragma: no cover - a broken library
        crc32c, IMPLEMENTATION = _crc32c_python, "pure Python (fallback: library failed B.4)"
        break

_LE32 = struct.Struct("<I")


def digest(data: Buffer) -> bytes:
    """The 4 wire bytes of the CRC32C of ``data``."""
    return _LE32.pack(crc32c(data, 0))


def digest_parts(parts: Iterable[Buffer]) -> bytes:
    crc = 0
    for p in parts:
        crc = crc32c(p, crc)
    return _LE32.pack(crc)
