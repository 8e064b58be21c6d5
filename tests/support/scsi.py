"""SCSI helpers the tests share: CDBs, running one on a LogicalUnit, reading sense data."""

from __future__ import annotations

import struct

from pyscsit.scsi.lu import LogicalUnit
from pyscsit.scsi.task import Nexus, ScsiCommand, ScsiResult, Status

#: an I_T nexus for tests that need only one
NX = Nexus("iqn.1994-05.com.example:init", 0x23D000000001, "iqn.2024-01.org.pyscsit:t1")

FUA = 0x08  # byte 1 of READ/WRITE(10/12/16)


def read16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x88, flags, lba, blocks, 0, 0)


def write16(lba: int, blocks: int, flags: int = 0, *, fua: bool = False) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, flags | (FUA if fua else 0), lba, blocks, 0, 0)


async def run(lu: LogicalUnit, cdb: bytes, data: bytes | None = None, nexus: Nexus = NX,
              edtl: int | None = None) -> ScsiResult:
    """Execute ``cdb`` with ``data`` as its Data-Out; EDTL is the data's length unless given."""
    mv = memoryview(data) if data is not None else None
    n = len(data or b"") if edtl is None else edtl
    return await lu.execute(ScsiCommand(cdb, nexus, data_out=mv, expected_length=n))


def sense_of(r: ScsiResult) -> tuple[int, int, int]:
    """(sense key, ASC, ASCQ) of a CHECK CONDITION."""
    assert r.status == Status.CHECK_CONDITION, r
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def field_ptr(r: ScsiResult) -> tuple[int, int | None]:
    """(byte, bit or None) of the sense-key specific field pointer (SPC-4 sense-key specific data)."""
    sks = r.sense[15]
    assert sks & 0x80, "SKSV must be set"
    return (r.sense[16] << 8) | r.sense[17], (sks & 7) if sks & 0x08 else None
