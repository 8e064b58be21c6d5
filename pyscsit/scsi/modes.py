"""Mode pages: MODE SENSE(6)/(10) parameter data and MODE SELECT(6)/(10) parameter lists
(SPC-4 6.9-6.12, 7.5; SBC-3 6.4).

Each page is one ``ModePage`` row: how to build it from the ``ModeState``, which bits a host
may change (the PC=01b "changeable values" mask) and how to apply an accepted page. MODE SENSE
and MODE SELECT both read the same rows, so what MODE SENSE calls changeable is exactly what
MODE SELECT accepts. Mode parameters are shared by every I_T nexus (SPC-4 7.5.1 permits either).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pyscsit.scsi.sense import (
    InvalidFieldInCdb,
    InvalidFieldInParameterList,
    ParameterListLengthError,
    SavingParametersNotSupported,
    WriteProtected,
)

PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3
ALL_PAGES = 0x3F
ALL_SUBPAGES = 0xFF

# SPC-4 table: MODE PARAMETERS CHANGED, for every other I_T nexus after a MODE SELECT.
UA_MODE_PARAMETERS_CHANGED = (0x2A, 0x01)


class SoftwareWriteProtected(WriteProtected):
    """7/27/02 LOGICAL UNIT SOFTWARE WRITE PROTECTED: the control page's SWP bit is set
    (SPC-4 7.5.7); a read-only LU answers the plain 7/27/00 WRITE PROTECTED."""

    ascq = 0x02


@dataclass(slots=True)
class ModeState:
    """Current values of the changeable mode parameters (not saveable: SP=1 is refused)."""

    wce: bool = True  # caching page: write back cache; WCE=0 makes every write FUA
    d_sense: bool = False  # control page: descriptor format sense data
    swp: bool = False  # control page: software write protect


_DEFAULTS = ModeState()


# --- the pages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModePage:
    code: int
    length: int  # the PAGE LENGTH byte: bytes after byte 1
    build: Callable[[ModeState], bytearray]  # the whole page from a state (header included)
    changeable: dict[int, int]  # page byte offset -> mask of the bits MODE SELECT may change
    apply: Callable[[ModeState, bytes], None] | None = None

    def page(self, state: ModeState, pc: int) -> bytes:
        if pc == PC_CHANGEABLE:
            out = bytearray(2 + self.length)
            for i, mask in self.changeable.items():
                out[i] = mask
        else:
            out = self.build(state if pc == PC_CURRENT else _DEFAULTS)
        out[0], out[1] = self.code, self.length
        return bytes(out)


def _rw_error_recovery(state: ModeState) -> bytearray:
    # SBC-3 6.4.7: all retry/recovery parameters zero; nothing is changeable.
    return bytearray(12)


def _caching(state: ModeState) -> bytearray:
    # SBC-3 6.4.5: only WCE means anything for a page-cache backed LU.
    page = bytearray(20)
    page[2] = 0x04 if state.wce else 0
    return page


def _apply_caching(state: ModeState, page: bytes) -> None:
    state.wce = bool(page[2] & 0x04)


def _control(state: ModeState) -> bytearray:
    # SPC-4 7.5.7
    page = bytearray(12)
    page[2] = 0x04 if state.d_sense else 0
    page[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering of SIMPLE tasks
    page[4] = 0x08 if state.swp else 0
    page[8:10] = b"\xff\xff"  # BUSY TIMEOUT PERIOD: unlimited
    return page


def _apply_control(state: ModeState, page: bytes) -> None:
    state.d_sense = bool(page[2] & 0x04)
    state.swp = bool(page[4] & 0x08)


PAGES: dict[int, ModePage] = {
    p.code: p
    for p in (
        ModePage(0x01, 0x0A, _rw_error_recovery, {}),
        ModePage(0x08, 0x12, _caching, {2: 0x04}, _apply_caching),  # WCE
        ModePage(0x0A, 0x0A, _control, {2: 0x04, 4: 0x08}, _apply_control),  # D_SENSE, SWP
    )
}


# --- MODE SENSE ----------------------------------------------------------------------------


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
    pages = b"".join(PAGES[p].page(state, req.pc) for p in select_pages(req.page, req.subpage))
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


# --- MODE SELECT ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModeSelectCdb:
    ten: bool  # MODE SELECT(10)
    pf: bool
    param_len: int


def parse_mode_select(cdb: bytes) -> ModeSelectCdb:
    """MODE SELECT(6) (SPC-4 6.9) or (10) (6.10)."""
    ten = cdb[0] == 0x55
    if cdb[1] & 0x01:
        # SP: no page is saveable (MODE SENSE reports PS=0 everywhere).
        raise InvalidFieldInCdb(1, 0, "saving mode pages is not supported")
    length = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
    return ModeSelectCdb(ten, bool(cdb[1] & 0x10), length)


def parse_mode_parameters(
    data: bytes | bytearray | memoryview,
    ten: bool,
    state: ModeState,
    *,
    num_blocks: int,
    block_size: int,
) -> list[tuple[ModePage, bytes]]:
    """Check a whole MODE SELECT parameter list against ``state``; nothing is applied.

    Field pointers are offsets in the parameter list (C/D=0). A list that ends inside the
    header, a block descriptor or a page is 5/1A/00 (SPC-4 6.9); anything else wrong
    (unsupported page, wrong page length, a change to a bit MODE SENSE does not report as
    changeable, a block descriptor that would change the capacity or block size) is 5/26/00.
    """
    buf = bytes(data)
    end = len(buf)
    hdr = 8 if ten else 4
    if end < hdr:
        raise ParameterListLengthError("mode parameter header truncated")
    # MODE DATA LENGTH is reserved for MODE SELECT and the device-specific parameter's WP and
    # DPOFUA bits are ignored (SBC-3 6.4.1); MEDIUM TYPE must be 00h for a block device.
    medium = buf[2] if ten else buf[1]
    if medium:
        raise InvalidFieldInParameterList(2 if ten else 1, 7, "MEDIUM TYPE must be 0")
    if ten:
        long_lba = bool(buf[4] & 0x01)
        bd_len = struct.unpack_from(">H", buf, 6)[0]
        bd_field = 6
    else:
        long_lba, bd_len, bd_field = False, buf[3], 3
    if bd_len not in (0, 16 if long_lba else 8):
        raise InvalidFieldInParameterList(bd_field, 7, f"block descriptor length {bd_len}")
    if hdr + bd_len > end:
        raise ParameterListLengthError("block descriptor truncated")
    if bd_len:
        _check_block_descriptor(buf, hdr, long_lba, num_blocks, block_size)
    pos = hdr + bd_len
    out: list[tuple[ModePage, bytes]] = []
    while pos < end:
        if pos + 2 > end:
            raise ParameterListLengthError("mode page header truncated")
        b0 = buf[pos]
        if b0 & 0xC0:
            # PS is reserved for MODE SELECT; SPF (sub-page format): we have no subpages.
            raise InvalidFieldInParameterList(pos, 7 if b0 & 0x80 else 6, "PS/SPF set")
        page = PAGES.get(b0 & 0x3F)
        if page is None:
            raise InvalidFieldInParameterList(pos, 5, f"mode page {b0 & 0x3F:#04x} unsupported")
        if buf[pos + 1] != page.length:
            raise InvalidFieldInParameterList(pos + 1, 7, "PAGE LENGTH mismatch")
        stop = pos + 2 + page.length
        if stop > end:
            raise ParameterListLengthError(f"mode page {page.code:#04x} truncated")
        new = buf[pos:stop]
        cur = page.build(state)
        for i in range(2, len(new)):
            bad = (new[i] ^ cur[i]) & ~page.changeable.get(i, 0) & 0xFF
            if bad:
                raise InvalidFieldInParameterList(pos + i, bad.bit_length() - 1,
                                                  f"mode page {page.code:#04x}: not changeable")
        out.append((page, new))
        pos = stop
    return out


def _check_block_descriptor(
    buf: bytes, at: int, long_lba: bool, num_blocks: int, block_size: int
) -> None:
    # SBC-3 6.4.2: NUMBER OF LOGICAL BLOCKS 0 keeps the capacity; the capacity and the block
    # length of a virtual disk are set by its configuration, not by MODE SELECT.
    if long_lba:
        blocks, length = struct.unpack_from(">Q4xI", buf, at)
        len_at = at + 12
    else:
        blocks = struct.unpack_from(">I", buf, at)[0]
        length = int.from_bytes(buf[at + 5 : at + 8], "big")
        len_at = at + 5
        num_blocks = min(num_blocks, 0xFFFFFFFF)
    if blocks not in (0, num_blocks):
        raise InvalidFieldInParameterList(at, 7, "NUMBER OF LOGICAL BLOCKS cannot change")
    if length != block_size:
        raise InvalidFieldInParameterList(len_at, 7, "LOGICAL BLOCK LENGTH cannot change")


def apply_mode_parameters(state: ModeState, pages: list[tuple[ModePage, bytes]]) -> bool:
    """Apply pages checked by ``parse_mode_parameters``; True when a value changed."""
    before = dataclasses.replace(state)
    for page, new in pages:
        if page.apply is not None:
            page.apply(state, new)
    return state != before
