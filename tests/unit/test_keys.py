"""Text codec and negotiation table (RFC 7143 §6, §13)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyscsit.keys import (
    IRRELEVANT,
    KEYS,
    NOT_UNDERSTOOD,
    REJECT,
    NegotiationError,
    Negotiator,
    OperationalParams,
    Rule,
    TargetLimits,
    TextError,
    encode_text,
    parse_text,
)

# -- codec ------------------------------------------------------------------------------------


def test_parse_and_encode_round_trip() -> None:
    data = b"InitiatorName=iqn.2020-01.org.example:host\0SessionType=Normal\0"
    pairs = parse_text(data)
    assert pairs == [("InitiatorName", "iqn.2020-01.org.example:host"),
                     ("SessionType", "Normal")]
    assert encode_text(pairs) == data


def test_empty_data_is_no_keys_and_trailing_nuls_are_padding() -> None:
    assert parse_text(b"") == []
    assert parse_text(b"\0\0\0") == []
    assert parse_text(b"A=1\0\0\0") == [("A", "1")]


def test_value_may_contain_equals_and_be_empty() -> None:
    assert parse_text(b"X-a=b=c\0SendTargets=\0") == [("X-a", "b=c"), ("SendTargets", "")]


@pytest.mark.parametrize("data", [
    b"NoTerminator=1",          # §6.1: every pair ends with NUL
    b"NoEquals\0",
    b"=value\0",                # empty key
    b"A=1\0\0B=2\0",            # empty item in the middle
    b"Bad Key=1\0",             # space is not a key character
    b"K" * 64 + b"=1\0",        # key longer than 63 bytes
    b"A=" + b"v" * 256 + b"\0",  # simple value longer than 255 bytes
    b"A=\xff\xfe\0",            # not UTF-8
    b"\xc3\xa9=1\0",            # key not ASCII
])
def test_malformed_text_raises_text_error(data: bytes) -> None:
    with pytest.raises(TextError):
        parse_text(data)


def test_key_of_63_bytes_and_large_chap_values_are_accepted() -> None:
    assert parse_text(b"K" * 63 + b"=1\0")[0][0] == "K" * 63
    big = "0x" + "ab" * 1024
    assert parse_text(encode_text([("CHAP_C", big)])) == [("CHAP_C", big)]


@given(st.lists(st.tuples(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_",
            min_size=1, max_size=63),
    st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]),
            max_size=60)), max_size=20))
def test_round_trip_property(pairs: list[tuple[str, str]]) -> None:
    assert parse_text(encode_text(pairs)) == pairs


@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_raise_text_error(data: bytes) -> None:
    try:
        parse_text(data)
    except TextError:
        pass


# -- the table ----------------------------------------------------------------------------------

RFC_7143_KEYS = [
    "HeaderDigest", "DataDigest", "MaxConnections", "SendTargets", "TargetName",
    "InitiatorName", "TargetAlias", "InitiatorAlias", "TargetAddress", "TargetPortalGroupTag",
    "InitialR2T", "ImmediateData", "MaxRecvDataSegmentLength", "MaxBurstLength",
    "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T",
    "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel", "SessionType",
    "AuthMethod", "OFMarker", "IFMarker", "OFMarkInt", "IFMarkInt",
]


def test_every_rfc_key_has_a_row() -> None:
    assert set(RFC_7143_KEYS) <= set(KEYS)


@pytest.mark.parametrize(("key", "rule", "default"), [
    ("HeaderDigest", Rule.LIST, "None"), ("MaxConnections", Rule.MIN, "1"),
    ("InitialR2T", Rule.OR, "Yes"), ("ImmediateData", Rule.AND, "Yes"),
    ("MaxBurstLength", Rule.MIN, "262144"), ("FirstBurstLength", Rule.MIN, "65536"),
    ("DefaultTime2Wait", Rule.MAX, "2"), ("DefaultTime2Retain", Rule.MIN, "20"),
    ("MaxOutstandingR2T", Rule.MIN, "1"), ("ErrorRecoveryLevel", Rule.MIN, "0"),
    ("MaxRecvDataSegmentLength", Rule.DECLARATIVE, "8192"),
])
def test_rules_and_defaults_follow_section_13(key: str, rule: Rule, default: str) -> None:
    assert KEYS[key].rule is rule
    assert KEYS[key].default == default


def neg(pairs: list[tuple[str, str]], session_type: str = "Normal",
        limits: TargetLimits | None = None) -> dict[str, str]:
    n = Negotiator(session_type=session_type, limits=limits or TargetLimits())
    return dict(n.respond(pairs))


@pytest.mark.parametrize(("offer", "answer"), [
    ("CRC32C,None", "CRC32C"), ("None,CRC32C", "None"), ("None", "None"),
    ("CRC32C", "CRC32C"), ("Foo,CRC32C", "CRC32C"), ("Foo", REJECT),
])
def test_list_rule_picks_the_initiators_first_supported(offer: str, answer: str) -> None:
    assert neg([("HeaderDigest", offer)])["HeaderDigest"] == answer
    assert neg([("DataDigest", offer)])["DataDigest"] == answer


def test_numeric_min_and_max_rules() -> None:
    got = neg([("MaxBurstLength", "16776192"), ("MaxOutstandingR2T", "1"),
               ("MaxConnections", "8"), ("ErrorRecoveryLevel", "2"),
               ("DefaultTime2Wait", "0"), ("DefaultTime2Retain", "3600")])
    assert got == {"MaxBurstLength": "1048576", "MaxOutstandingR2T": "1",
                   "MaxConnections": "1", "ErrorRecoveryLevel": "0",
                   "DefaultTime2Wait": "2", "DefaultTime2Retain": "20"}
    got = neg([("MaxBurstLength", "65536"), ("DefaultTime2Wait", "10"),
               ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "64")])
    assert got == {"MaxBurstLength": "65536", "DefaultTime2Wait": "10",
                   "DefaultTime2Retain": "0", "MaxOutstandingR2T": "16"}


def test_hex_numbers_are_understood() -> None:
    assert neg([("MaxBurstLength", "0x10000")])["MaxBurstLength"] == "65536"


@pytest.mark.parametrize(("key", "value"), [
    ("MaxBurstLength", "511"), ("MaxBurstLength", "16777216"), ("MaxConnections", "0"),
    ("ErrorRecoveryLevel", "3"), ("DefaultTime2Wait", "3601"), ("MaxOutstandingR2T", "-1"),
    ("FirstBurstLength", "abc"), ("MaxBurstLength", ""), ("MaxBurstLength", "0x"),
    ("InitialR2T", "yes"), ("ImmediateData", "Maybe"), ("DataPDUInOrder", ""),
    ("OFMarkInt", "5"), ("IFMarkInt", "9~3"),
])
def test_out_of_range_or_bad_values_are_rejected(key: str, value: str) -> None:
    n = Negotiator()
    assert dict(n.respond([(key, value)]))[key] == REJECT
    # a rejected key keeps its default
    assert key not in n.agreed


@pytest.mark.parametrize(("key", "offer", "answer"), [
    ("InitialR2T", "Yes", "Yes"), ("InitialR2T", "No", "No"),  # OR with our No
    ("ImmediateData", "Yes", "Yes"), ("ImmediateData", "No", "No"),  # AND with our Yes
    ("DataPDUInOrder", "No", "Yes"), ("DataSequenceInOrder", "No", "Yes"),  # OR with Yes
    ("OFMarker", "Yes", "No"), ("IFMarker", "Yes", "No"),  # AND with our No
])
def test_boolean_rules(key: str, offer: str, answer: str) -> None:
    assert neg([(key, offer)])[key] == answer


def test_boolean_rules_with_other_target_values() -> None:
    strict = TargetLimits(initial_r2t=True, immediate_data=False)
    got = neg([("InitialR2T", "No"), ("ImmediateData", "Yes")], limits=strict)
    assert got == {"InitialR2T": "Yes", "ImmediateData": "No"}


def test_first_burst_length_is_irrelevant_with_initial_r2t_and_no_immediate_data() -> None:
    # §13.14; FirstBurstLength comes first in the PDU but is decided last.
    got = neg([("FirstBurstLength", "65536"), ("InitialR2T", "Yes"),
               ("ImmediateData", "No")], limits=TargetLimits(initial_r2t=True))
    assert got["FirstBurstLength"] == IRRELEVANT


def test_first_burst_length_never_exceeds_max_burst_length() -> None:
    n = Negotiator()
    got = dict(n.respond([("FirstBurstLength", "262144"), ("MaxBurstLength", "131072")]))
    assert got == {"FirstBurstLength": "131072", "MaxBurstLength": "131072"}
    p = n.params(declared_mrdsl=262144)
    assert p.first_burst_length == 131072 and p.max_burst_length == 131072


def test_marker_intervals_are_irrelevant() -> None:
    assert neg([("OFMarkInt", "1~65535")])["OFMarkInt"] == IRRELEVANT


def test_unknown_and_private_keys_are_not_understood() -> None:
    got = neg([("X-com.example.Foo", "1"), ("X#vendor", "y"), ("Unheard", "z")])
    assert got == {"X-com.example.Foo": NOT_UNDERSTOOD, "X#vendor": NOT_UNDERSTOOD,
                   "Unheard": NOT_UNDERSTOOD}


def test_declarative_keys_get_no_answer() -> None:
    n = Negotiator()
    got = n.respond([("InitiatorName", "iqn.x"), ("InitiatorAlias", "host"),
                     ("MaxRecvDataSegmentLength", "65536"), ("SessionType", "Normal")])
    assert got == []
    assert n.declared["InitiatorAlias"] == "host"
    assert n.params(declared_mrdsl=None).max_xmit_data_segment_length == 65536


@pytest.mark.parametrize("value", ["511", "16777216", "lots"])
def test_unusable_max_recv_data_segment_length_fails(value: str) -> None:
    with pytest.raises(NegotiationError):
        Negotiator().respond([("MaxRecvDataSegmentLength", value)])


def test_discovery_session_makes_data_keys_irrelevant() -> None:
    got = neg([("MaxBurstLength", "262144"), ("InitialR2T", "No"), ("ImmediateData", "Yes"),
               ("MaxConnections", "1"), ("FirstBurstLength", "65536"),
               ("MaxOutstandingR2T", "1"), ("DataPDUInOrder", "Yes"),
               ("DataSequenceInOrder", "Yes"), ("HeaderDigest", "CRC32C"),
               ("ErrorRecoveryLevel", "0")], session_type="Discovery")
    for key in ("MaxBurstLength", "InitialR2T", "ImmediateData", "MaxConnections",
                "FirstBurstLength", "MaxOutstandingR2T", "DataPDUInOrder",
                "DataSequenceInOrder"):
        assert got[key] == IRRELEVANT
    assert got["HeaderDigest"] == "CRC32C"
    assert got["ErrorRecoveryLevel"] == "0"


def test_a_key_sent_twice_is_an_error() -> None:
    n = Negotiator()
    n.respond([("MaxBurstLength", "65536")])
    with pytest.raises(NegotiationError):
        n.respond([("MaxBurstLength", "65536")])


@pytest.mark.parametrize("key", ["TargetAlias", "TargetAddress", "TargetPortalGroupTag"])
def test_target_only_keys_from_the_initiator_are_an_error(key: str) -> None:
    with pytest.raises(NegotiationError):
        Negotiator().respond([(key, "1")])


def test_params_defaults_follow_the_rfc() -> None:
    p = Negotiator().params(declared_mrdsl=None)
    assert p == OperationalParams()
    assert (p.initial_r2t, p.immediate_data, p.max_burst_length, p.first_burst_length,
            p.max_recv_data_segment_length, p.max_xmit_data_segment_length) == (
        True, True, 262144, 65536, 8192, 8192)


def test_params_reflect_negotiation() -> None:
    n = Negotiator()
    n.respond([("HeaderDigest", "CRC32C,None"), ("DataDigest", "None"),
               ("InitialR2T", "No"), ("ImmediateData", "Yes"),
               ("MaxRecvDataSegmentLength", "262144"), ("MaxBurstLength", "16776192"),
               ("FirstBurstLength", "262144"), ("MaxOutstandingR2T", "8"),
               ("DefaultTime2Wait", "0"), ("DefaultTime2Retain", "0")])
    p = n.params(declared_mrdsl=131072)
    assert p.header_digest and not p.data_digest
    assert not p.initial_r2t and p.immediate_data
    assert p.max_recv_data_segment_length == 131072
    assert p.max_xmit_data_segment_length == 262144
    assert (p.max_burst_length, p.first_burst_length, p.max_outstanding_r2t) == (
        1048576, 262144, 8)
    assert (p.default_time2wait, p.default_time2retain) == (2, 0)


@given(st.lists(st.tuples(st.sampled_from(sorted(KEYS) + ["X-foo", "Zzz"]),
                          st.text(max_size=20)), max_size=30))
def test_negotiator_only_raises_its_own_error(pairs: list[tuple[str, str]]) -> None:
    n = Negotiator()
    try:
        n.respond(pairs)
    except NegotiationError:
        return
    n.params(declared_mrdsl=None)
