"""Mode pages and MODE SENSE(6)/(10) parameter data (SPC-4 7.5, SBC-3 6.4)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from pyscsit.scsi.sense import InvalidFieldInCdb, SavingParametersNotSupported

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3
ALL_PAGES = 0x3F
ALL_SUBPAGES = 0xFF


@dataclass(slots=True)
class ModeState:
    """Current values of the mode parameters we implement (not saveable: no MODE SELECT yet)."""

    wce: bool = True  # caching page: writes land in the page cache; SYNC CACHE/FUA honoured
    d_sense: bool = False  # control page: descriptor format sense data
    swp: bool = False  # control page: software write protect


_DEFAULTS = ModeState()


@dataclass(frozen=True, slots=True)
class ModeSenseCdb:
    ten: bool  # MODE SENSE(10)
    dbd: bool
    llbaa: bool
    pc: int
    page: int
    subpage: int
    alloc_len: int


def parse_mode_sense(cdb: bytes) -> ModeSenseCdb:
    """MODE SENSE(6) (SPC-4 6.11) or (10) (6.12)."""
    ten = cdb[0] == 0x5A
    alloc = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
    pc = cdb[2] >> 6
    if pc == PC_SAVED:
        raise SavingParametersNotSupported("saved mode pages are not supported")
    return ModeSenseCdb(
        ten=ten,
        dbd=bool(cdb[1] & 0x08),
        llbaa=ten and bool(cdb[1] & 0x10),
        pc=pc,
        page=cdb[2] & 0x3F,
        subpage=cdb[3],
        alloc_len=alloc,
    )


# --- the pages -----------------------------------------------------------------------------
# Each builder returns the whole page (page code byte, length byte, parameters) for one PC.


def _rw_error_recovery(state: ModeState, pc: int) -> bytes:
    # SBC-3 6.4.7: all retry/recovery parameters zero; nothing is changeable.
    return bytes((0x01, 0x0A)) + bytes(10)


def _caching(state: ModeState, pc: int) -> bytes:
    # SBC-3 6.4.5
    page = bytearray(20)
    page[0], page[1] = 0x08, 0x12
    if pc == PC_CURRENT:
        page[2] = 0x04 if state.wce else 0
    elif pc == PC_DEFAULT:
        page[2] = 0x04 if _DEFAULTS.wce else 0
    return bytes(page)


def _control(state: ModeState, pc: int) -> bytes:
    # SPC-4 7.5.7
    page = bytearray(12)
    page[0], page[1] = 0x0A, 0x0A
    if pc == PC_CHANGEABLE:
        return bytes(page)
    s = state if pc == PC_CURRENT else _DEFAULTS
    page[2] = 0x04 if s.d_sense else 0
    page[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering of SIMPLE tasks
    page[4] = 0x08 if s.swp else 0
    page[8:10] = b"\xff\xff"  # BUSY TIMEOUT PERIOD: unlimited
    return bytes(page)


PageBuilder = Callable[[ModeState, int], bytes]
PAGES: dict[int, PageBuilder] = {
    0x01: _rw_error_recovery,
    0x08: _caching,
    0x0A: _control,
}


def select_pages(page: int, subpage: int) -> list[int]:
    """Page codes a request returns; 5/24/00 for unsupported page or subpage."""
    if subpage not in (0x00, ALL_SUBPAGES):
        raise InvalidFieldInCdb(3, None, f"subpage {subpage:#04x} not supported")
    if page == ALL_PAGES:
        return sorted(PAGES)
    if page not in PAGES:
        raise InvalidFieldInCdb(2, 5, f"mode page {page:#04x} not supported")
    return [page]


def mode_sense_data(
    req: ModeSenseCdb,
    state: ModeState,
    *,
    num_blocks: int,
    block_size: int,
    write_protected: bool,
) -> bytes:
    """Mode parameter header + block descriptor + pages, not yet truncated."""
    pages = b"".join(PAGES[p](state, req.pc) for p in select_pages(req.page, req.subpage))
    # SBC-3 6.4.1 device-specific parameter: WP, DPOFUA (we honour DPO and FUA)
    dsp = (0x80 if write_protected else 0) | 0x10
    bd = b""
    if not req.dbd:
        if req.llbaa:
            bd = struct.pack(">QII", num_blocks, 0, block_size)
        else:
            # SBC-3 6.4.2: 0xFFFFFFFF when the count does not fit
            blocks = min(num_blocks, 0xFFFFFFFF)
            bd = struct.pack(">IB", blocks, 0) + block_size.to_bytes(3, "big")
    if req.ten:
        body = bd + pages
        hdr = struct.pack(">HBBBBH", 6 + len(body), 0, dsp, 1 if len(bd) == 16 else 0, 0,
                          len(bd))
        return hdr + body
    body = bd + pages
    return bytes((min(3 + len(body), 255), 0, dsp, len(bd))) + body
