"""Vital product data pages (SPC-4 7.8, SBC-3 6.6). Page 0x00 is built from ``PAGES``."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyscsit.scsi import provisioning, xcopy
from pyscsit.scsi.sense import InvalidFieldInCdb
from pyscsit.scsi.task import Nexus

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit

PROTO_ISCSI = 0x5
CODE_BINARY, CODE_ASCII, CODE_UTF8 = 1, 2, 3
ASSOC_LU, ASSOC_PORT, ASSOC_DEVICE = 0, 1, 2
DESIG_T10, DESIG_NAA, DESIG_REL_PORT, DESIG_TPG, DESIG_NAME = 1, 3, 4, 5, 8

TARGET_PORT_GROUP = 1  # one group until ALUA is implemented


def _page(lu: LogicalUnit, code: int, body: bytes) -> bytes:
    return struct.pack(">BBH", lu.peripheral_byte, code, len(body)) + body


def designator(code_set: int, assoc: int, dtype: int, value: bytes, *, piv: bool = False) -> bytes:
    """One identification descriptor (SPC-4 7.8.6.1)."""
    b0 = code_set | ((PROTO_ISCSI << 4) if piv else 0)
    b1 = (0x80 if piv else 0) | (assoc << 4) | dtype
    return bytes((b0, b1, 0, len(value))) + value


def scsi_name(name: str) -> bytes:
    """SCSI name string: UTF-8, null terminated, padded to a multiple of 4 (SPC-4 7.8.6.11)."""
    raw = name.encode("utf-8") + b"\x00"
    return raw + bytes(-len(raw) % 4)


def _supported_pages(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return _page(lu, 0x00, bytes(sorted(PAGES)))


def _unit_serial(lu: LogicalUnit, nexus: Nexus) -> bytes:
    return _page(lu, 0x80, lu.identity.serial.encode("ascii"))


def _device_identification(lu: LogicalUnit, nexus: Nexus) -> bytes:
    ident = lu.identity
    t10 = lu.vendor.encode("ascii").ljust(8) + ident.serial.encode("ascii")
    descs = [
        designator(CODE_BINARY, ASSOC_LU, DESIG_NAA, ident.naa),
        designator(CODE_ASCII, ASSOC_LU, DESIG_T10, t10),
        designator(CODE_BINARY, ASSOC_PORT, DESIG_REL_PORT,
                   struct.pack(">HH", 0, nexus.relative_port & 0xFFFF), piv=True),
        designator(CODE_BINARY, ASSOC_PORT, DESIG_TPG,
                   struct.pack(">HH", 0, TARGET_PORT_GROUP), piv=True),
    ]
    if nexus.target_name:
        descs.append(designator(CODE_UTF8, ASSOC_PORT, DESIG_NAME,
                                scsi_name(nexus.target_port), piv=True))
        descs.append(designator(CODE_UTF8, ASSOC_DEVICE, DESIG_NAME,
                                scsi_name(nexus.target_name), piv=True))
    return _page(lu, 0x83, b"".join(descs))


def _extended_inquiry(lu: LogicalUnit, nexus: Nexus) -> bytes:
    # SPC-4 7.8.7, page length 0x3C. SIMPSUP: SIMPLE task attribute; V_SUP: a volatile
    # (page) cache that SYNCHRONIZE CACHE and FUA flush; LUICLR must be one in SPC-4 (unit
    # attentions are kept and cleared per I_T nexus). No protection information.
    body = bytearray(0x3C)
    body[1] = 0x01  # SIMPSUP
    body[2] = 0x01  # V_SUP
    body[3] = 0x01  # LUICLR
    return _page(lu, 0x86, bytes(body))


def _block_limits(lu: LogicalUnit, nexus: Nexus) -> bytes:
    # SBC-3 6.6.3; page length 0x3C
    body = bytearray(0x3C)
    granularity = max(1, lu.physical_block_size // lu.block_size)
    body[1] = lu.max_compare_write_blocks  # MAXIMUM COMPARE AND WRITE LENGTH (SBC-3 5.2)
    struct.pack_into(">H", body, 2, min(granularity, 0xFFFF))  # OPTIMAL TRANSFER LENGTH GRAN.
    struct.pack_into(">I", body, 4, lu.max_transfer_blocks)  # MAXIMUM TRANSFER LENGTH
    struct.pack_into(">I", body, 8, lu.max_transfer_blocks)  # OPTIMAL TRANSFER LENGTH
    if lu.lbpu:
        struct.pack_into(">I", body, 16, lu.max_unmap_blocks)  # MAXIMUM UNMAP LBA COUNT
        struct.pack_into(">I", body, 20, lu.max_unmap_descriptors)
        struct.pack_into(">I", body, 24, granularity)  # OPTIMAL UNMAP GRANULARITY
        struct.pack_into(">I", body, 28, 0x80000000)  # UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
    # What provisioning.py enforces: WSNZ (byte 4 bit 0), MAXIMUM WRITE SAME LENGTH, and
    # the WRITE ATOMIC(16) limits (SBC-4 6.6.4).
    body[0] |= 0x01 if provisioning.WSNZ else 0
    struct.pack_into(">Q", body, 32, provisioning.MAX_WRITE_SAME_BLOCKS)
    struct.pack_into(">III", body, 40, *provisioning.atomic_limits(lu))
    return _page(lu, 0xB0, bytes(body))


def _block_device_characteristics(lu: LogicalUnit, nexus: Nexus) -> bytes:
    # SBC-3 6.6.2; MEDIUM ROTATION RATE 1 = non-rotating medium
    body = bytearray(0x3C)
    struct.pack_into(">H", body, 0, 1)
    # SBC-4 6.6.2 WABEREQ / WACEREQ 01b: reads after a SANITIZE BLOCK ERASE / CRYPTO ERASE
    # succeed (the emulated erase leaves zeros).
    body[3] = 0x50
    return _page(lu, 0xB1, bytes(body))


def _logical_block_provisioning(lu: LogicalUnit, nexus: Nexus) -> bytes:
    # SBC-3 6.6.4: advertise only what is implemented
    flags = 0
    if lu.lbpu:
        flags |= 0x80  # LBPU: UNMAP
    if lu.lbpws:
        flags |= 0x40  # LBPWS: WRITE SAME(16) with UNMAP
    if lu.lbpws10:
        flags |= 0x20  # LBPWS10
    if lu.lbpme and lu.backend.unmap_reads_zeros:
        flags |= 0x04  # LBPRZ
    ptype = 2 if lu.lbpme else 0  # thin provisioned / fully provisioned
    return _page(lu, 0xB2, bytes((0, flags, ptype, 0)))


def _third_party_copy(lu: LogicalUnit, nexus: Nexus) -> bytes:
    # SPC-4 7.8.17: EXTENDED COPY (LID1) limits, the same constants the command enforces
    return _page(lu, 0x8F, xcopy.third_party_copy_descriptors(lu))


VpdBuilder = Callable[["LogicalUnit", Nexus], bytes]
PAGES: dict[int, VpdBuilder] = {
    0x00: _supported_pages,
    0x80: _unit_serial,
    0x83: _device_identification,
    0x86: _extended_inquiry,
    0x8F: _third_party_copy,
    0xB0: _block_limits,
    0xB1: _block_device_characteristics,
    0xB2: _logical_block_provisioning,
}


def vpd_page(lu: LogicalUnit, nexus: Nexus, code: int) -> bytes:
    builder = PAGES.get(code)
    if builder is None:
        raise InvalidFieldInCdb(2, None, f"VPD page {code:#04x} not supported")
    return builder(lu, nexus)
