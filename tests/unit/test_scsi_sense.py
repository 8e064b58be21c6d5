"""Sense data encoding: golden bytes for fixed (0x70) and descriptor (0x72) formats."""

from __future__ import annotations

from pyscsit.scsi.sense import (
    FieldPointer,
    InvalidFieldInCdb,
    InvalidFieldInParameterList,
    LbaOutOfRange,
    Miscompare,
    Sense,
    SenseKey,
    UnitAttention,
    WriteProtected,
    encode_sense,
)


def test_fixed_invalid_field_in_cdb_with_bit_pointer() -> None:
    # INVALID FIELD IN CDB, pointing at CDB byte 1 bit 7 (RDPROTECT)
    got = InvalidFieldInCdb(1, 7).encode()
    assert got == bytes.fromhex("70 00 05 00000000 0a 00000000 24 00 00 cf 0001".replace(" ", ""))


def test_fixed_field_pointer_without_bit_and_parameter_list() -> None:
    got = InvalidFieldInParameterList(300).encode()
    # SKSV set, C/D clear (parameter list), BPV clear; field pointer 0x012c
    assert got[15:18] == bytes((0x80, 0x01, 0x2C))
    assert got[12:14] == bytes((0x26, 0x00))


def test_fixed_lba_out_of_range_has_no_sks() -> None:
    got = LbaOutOfRange().encode()
    assert got == bytes.fromhex("700005000000000a000000002100000000 00".replace(" ", ""))
    assert len(got) == 18


def test_fixed_miscompare_information_valid() -> None:
    got = Miscompare(information=0x1234).encode()
    assert got[0] == 0xF0  # VALID | 0x70
    assert got[2] == SenseKey.MISCOMPARE
    assert got[3:7] == bytes.fromhex("00001234")
    assert got[12:14] == bytes((0x1D, 0x00))


def test_fixed_information_too_big_clears_valid() -> None:
    got = encode_sense(Sense(3, 0x11, 0, information=1 << 40))
    assert got[0] == 0x70 and got[3:7] == bytes(4)


def test_descriptor_format_golden() -> None:
    got = InvalidFieldInCdb(2, None).encode(descriptor=True)
    assert got == bytes.fromhex("72052400000000 08 02060000 c00002 00".replace(" ", ""))


def test_descriptor_information_descriptor() -> None:
    got = Miscompare(information=7).encode(descriptor=True)
    assert got[:4] == bytes((0x72, 0x0E, 0x1D, 0x00))
    assert got[7] == 12
    assert got[8:20] == bytes.fromhex("000a8000" + "0000000000000007")


def test_unit_attention_codes_and_data_protect() -> None:
    assert UnitAttention(0x29, 0x03).encode()[2:14:10] == bytes((6, 0x29))
    assert UnitAttention(0x29, 0x03).encode()[13] == 0x03
    wp = WriteProtected().encode()
    assert (wp[2], wp[12], wp[13]) == (7, 0x27, 0)


def test_field_pointer_encoding() -> None:
    assert FieldPointer(0x0102, 3).encode() == bytes((0xCB, 0x01, 0x02))
    assert FieldPointer(4, None, in_cdb=False).encode() == bytes((0x80, 0, 4))
