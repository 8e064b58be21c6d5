"""The login state machine, played from the initiator side with real Login PDUs
(encoded to bytes and framed back, both directions)."""

from __future__ import annotations

import hashlib
import itertools
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyscsit.acl import LoginGuard
from pyscsit.chap import decode_binary, encode_hex
from pyscsit.keys import OperationalParams, encode_text, parse_text
from pyscsit.login import (
    LOGIN_TEXT_LIMIT,
    LoginMachine,
    LoginStatus,
    send_targets,
    text_exchange,
)
from pyscsit.pdu import LoginRequest, LoginResponse, PduReader, encode_bytes
from pyscsit.target import Auth, Chap, Model, Portal, Target

IQN = "iqn.2026-11.org.example:disk0"
SECURE = "iqn.2026-11.org.example:secure"
MUTUAL = "iqn.2026-11.org.example:mutual"
INITIATOR = "iqn.2026-01.org.example:host1"
ALICE = Chap("alice", "a-long-secret-1")
TGT = Chap("target0", "another-secret-2")
HASH = {5: hashlib.md5, 6: hashlib.sha1, 7: hashlib.sha256, 8: hashlib.sha3_256}

OP_KEYS = [
    ("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"), ("InitialR2T", "No"),
    ("ImmediateData", "Yes"), ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"), ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"), ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"),
    ("OFMarker", "No"), ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "262144"),
    ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"),
]


def model(**kw: Any) -> Model:
    targets = {
        IQN: Target(IQN, Auth(), alias="disk zero", tpgt=1),
        SECURE: Target(SECURE, Auth(chap=ALICE), tpgt=2),
        MUTUAL: Target(MUTUAL, Auth(chap=ALICE, mutual_chap=TGT), tpgt=3),
    }
    kw.setdefault("portals", [Portal("0.0.0.0", 3260), Portal("::", 3261),
                              Portal("192.0.2.7", 3260), Portal("2001:db8::1", 3260)])
    return Model(targets=targets, state_dir="/nonexistent", **kw)


class Initiator:
    """Plays the initiator: builds Login Requests, passes them through the codec."""

    def __init__(self, m: Model | None = None, **kw: Any) -> None:
        self.tsihs = itertools.count(0x10)
        self.machine = LoginMachine(
            m or model(), local_addr=kw.pop("local_addr", ("10.1.2.3", 3260)),
            peer_addr=("10.9.9.9", 50000), tsih_allocator=lambda: next(self.tsihs), **kw)
        self.stat_sns: list[int] = []

    def send(self, pairs: list[tuple[str, str]] | bytes = b"", *, csg: int = 1, nsg: int = 3,
             transit: bool = True, cont: bool = False, **fields: Any) -> LoginResponse:
        data = pairs if isinstance(pairs, bytes) else encode_text(pairs)
        base: dict[str, Any] = {"itt": 0x1234, "isid": 0x400001370000, "cid": 0, "cmd_sn": 100,
                                    "exp_stat_sn": 5000}
        base.update(fields)
        req = LoginRequest(final=transit, cont=cont, csg=csg, nsg=nsg, data=data, **base)
        reader = PduReader(max_data=1 << 20)
        reader.feed(encode_bytes(req))
        framed = reader.next_pdu()
        assert isinstance(framed, LoginRequest)
        resp = self.machine.handle(framed)
        assert isinstance(resp, LoginResponse)
        reader.feed(encode_bytes(resp))
        back = reader.next_pdu()
        assert isinstance(back, LoginResponse)
        self.stat_sns.append(back.stat_sn)
        return back


def keys(resp: LoginResponse) -> dict[str, str]:
    return dict(parse_text(bytes(resp.data)))


def status(resp: LoginResponse) -> int:
    return resp.status_class << 8 | resp.status_detail


def first_keys(target: str = IQN, **extra: str) -> list[tuple[str, str]]:
    out = [("InitiatorName", INITIATOR), ("SessionType", "Normal"), ("TargetName", target)]
    return out + list(extra.items())


# -- anonymous, one PDU ------------------------------------------------------------------------


def test_anonymous_normal_login_in_one_pdu() -> None:
    ini = Initiator()
    resp = ini.send(first_keys() + [("InitiatorAlias", "host1")] + OP_KEYS)
    assert status(resp) == LoginStatus.SUCCESS
    assert (resp.final, resp.csg, resp.nsg) == (True, 1, 3)
    assert resp.tsih == 0x10
    assert resp.itt == 0x1234 and resp.isid == 0x400001370000
    assert resp.stat_sn == 5000 and resp.exp_cmd_sn == 100 and resp.max_cmd_sn == 163
    k = keys(resp)
    assert k["TargetPortalGroupTag"] == "1"
    assert k["TargetAlias"] == "disk zero"
    assert k["MaxRecvDataSegmentLength"] == "262144"
    assert k["HeaderDigest"] == "None"
    assert k["InitialR2T"] == "No" and k["ImmediateData"] == "Yes"
    assert k["MaxBurstLength"] == "1048576" and k["FirstBurstLength"] == "262144"
    assert k["DefaultTime2Retain"] == "0" and k["MaxOutstandingR2T"] == "1"
    assert "InitiatorName" not in k and "SessionType" not in k
    m = ini.machine
    assert m.done and not m.failed and m.result is not None
    r = m.result
    assert (r.session_type, r.initiator_name, r.initiator_alias) == (
        "Normal", INITIATOR, "host1")
    assert r.target is not None and r.target.iqn == IQN
    assert (r.isid, r.tsih, r.cid, r.exp_cmd_sn, r.stat_sn) == (
        0x400001370000, 0x10, 0, 100, 5001)
    p = r.params
    assert not p.header_digest and not p.initial_r2t and p.immediate_data
    assert (p.max_recv_data_segment_length, p.max_xmit_data_segment_length) == (
        262144, 262144)
    assert (p.max_burst_length, p.first_burst_length) == (1048576, 262144)


def test_header_digest_preference_is_the_initiators() -> None:
    ini = Initiator()
    resp = ini.send(first_keys(HeaderDigest="CRC32C,None", DataDigest="CRC32C"))
    assert keys(resp)["HeaderDigest"] == "CRC32C"
    assert ini.machine.result is not None
    assert ini.machine.result.params.header_digest
    assert ini.machine.result.params.data_digest


def test_login_with_no_operational_keys_gets_defaults_and_our_declaration() -> None:
    ini = Initiator(max_recv_data_segment_length=65536, cmd_window=8)
    resp = ini.send(first_keys())
    assert keys(resp)["MaxRecvDataSegmentLength"] == "65536"
    assert resp.max_cmd_sn == 107
    assert ini.machine.result is not None
    p = ini.machine.result.params
    assert p == OperationalParams(max_recv_data_segment_length=65536)


def test_security_then_operational_anonymous() -> None:
    ini = Initiator()
    r1 = ini.send(first_keys() + [("AuthMethod", "None")], csg=0, nsg=1)
    assert keys(r1)["AuthMethod"] == "None"
    assert keys(r1)["TargetPortalGroupTag"] == "1"
    assert (r1.final, r1.csg, r1.nsg, r1.tsih) == (True, 0, 1, 0)
    r2 = ini.send(OP_KEYS, csg=1, nsg=3)
    assert (r2.final, r2.csg, r2.nsg) == (True, 1, 3)
    assert "TargetPortalGroupTag" not in keys(r2)
    assert ini.stat_sns == [5000, 5001]
    assert ini.machine.result is not None and ini.machine.result.stat_sn == 5002


def test_security_stage_asking_for_ffp_goes_through_operational_stage() -> None:
    ini = Initiator()
    r1 = ini.send(first_keys() + [("AuthMethod", "None")], csg=0, nsg=3)
    assert (r1.final, r1.nsg) == (True, 1)
    assert not ini.machine.done
    r2 = ini.send([], csg=1, nsg=3)
    assert r2.final and ini.machine.done


def test_target_may_hold_the_initiator_in_a_stage() -> None:
    ini = Initiator()
    r1 = ini.send(first_keys(), csg=1, transit=False)
    assert not r1.final and status(r1) == 0
    r2 = ini.send(OP_KEYS, csg=1, nsg=3)
    assert r2.final and ini.machine.done


# -- CHAP --------------------------------------------------------------------------------------


def chap_login(ini: Initiator, target: str, alg: str, secret: str = ALICE.secret,
               mutual: tuple[int, bytes] | None = None) -> LoginResponse:
    r1 = ini.send(first_keys(target, AuthMethod="CHAP,None"), csg=0, nsg=1)
    assert status(r1) == 0 and keys(r1)["AuthMethod"] == "CHAP"
    assert not r1.final  # CHAP not done yet
    r2 = ini.send([("CHAP_A", alg)], csg=0, nsg=1, transit=False)
    k = keys(r2)
    chosen, ident, challenge = int(k["CHAP_A"]), int(k["CHAP_I"]), decode_binary(k["CHAP_C"])
    assert k["CHAP_C"].startswith("0x")  # libiscsi only reads hex challenges
    resp = HASH[chosen](bytes([ident]) + secret.encode() + challenge).digest()
    pairs = [("CHAP_N", "alice"), ("CHAP_R", encode_hex(resp))]
    if mutual:
        pairs += [("CHAP_I", str(mutual[0])), ("CHAP_C", encode_hex(mutual[1]))]
    return ini.send(pairs, csg=0, nsg=1)


@pytest.mark.parametrize("alg", ["5", "6", "7", "8", "7,6,5"])
def test_chap_login_security_operational_ffp(alg: str) -> None:
    ini = Initiator()
    r3 = chap_login(ini, SECURE, alg)
    assert status(r3) == 0 and (r3.final, r3.csg, r3.nsg) == (True, 0, 1)
    r4 = ini.send(OP_KEYS, csg=1, nsg=3)
    assert status(r4) == 0 and r4.final and r4.tsih == 0x10
    assert ini.machine.done and ini.machine.result is not None
    assert ini.stat_sns == [5000, 5001, 5002, 5003]


def test_chap_wrong_secret_is_authentication_failure() -> None:
    ini = Initiator()
    r = chap_login(ini, SECURE, "5", secret="wrong")
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE
    assert ini.machine.failed and not ini.machine.done and not r.data


def test_chap_target_refuses_auth_method_none() -> None:
    ini = Initiator()
    r = ini.send(first_keys(SECURE, AuthMethod="None"), csg=0, nsg=1)
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE


def test_chap_target_refuses_skipping_to_operational_stage() -> None:
    ini = Initiator()
    r = ini.send(first_keys(SECURE) + OP_KEYS, csg=1, nsg=3)
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE


def test_chap_target_refuses_transit_without_credentials() -> None:
    ini = Initiator()
    ini.send(first_keys(SECURE, AuthMethod="CHAP"), csg=0, nsg=1)
    ini.send([("CHAP_A", "5")], csg=0, nsg=1, transit=False)
    r = ini.send([], csg=0, nsg=1)  # T=1 without CHAP_N/CHAP_R: held in stage
    assert not r.final and status(r) == 0
    r = ini.send([], csg=1, nsg=3)  # and jumping ahead is an initiator error
    assert status(r) == LoginStatus.INITIATOR_ERROR


def test_chap_target_with_no_auth_method_at_all_fails_on_transit() -> None:
    ini = Initiator()
    r = ini.send(first_keys(SECURE), csg=0, nsg=1)
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE


def test_mutual_chap() -> None:
    ini = Initiator()
    mine = bytes(range(7, 39))
    r = chap_login(ini, MUTUAL, "7", mutual=(42, mine))
    assert status(r) == 0 and r.final
    k = keys(r)
    assert k["CHAP_N"] == "target0"
    expected = hashlib.sha256(bytes([42]) + TGT.secret.encode() + mine).digest()
    assert decode_binary(k["CHAP_R"]) == expected
    assert ini.send(OP_KEYS, csg=1, nsg=3).final


def test_mutual_chap_reflection_is_refused() -> None:
    ini = Initiator()
    ini.send(first_keys(MUTUAL, AuthMethod="CHAP"), csg=0, nsg=1)
    k = keys(ini.send([("CHAP_A", "5")], csg=0, nsg=1, transit=False))
    ident, challenge = int(k["CHAP_I"]), decode_binary(k["CHAP_C"])
    resp = hashlib.md5(bytes([ident]) + ALICE.secret.encode() + challenge).digest()
    r = ini.send([("CHAP_N", "alice"), ("CHAP_R", encode_hex(resp)),
                  ("CHAP_I", str(ident)), ("CHAP_C", k["CHAP_C"])], csg=0, nsg=1)
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE


def test_mutual_request_to_a_one_way_target_fails() -> None:
    ini = Initiator()
    r = chap_login(ini, SECURE, "5", mutual=(1, b"\x55" * 16))
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE


def test_chap_keys_on_an_anonymous_target_are_an_error() -> None:
    ini = Initiator()
    ini.send(first_keys(AuthMethod="None"), csg=0, nsg=1, transit=False)
    r = ini.send([("CHAP_A", "5")], csg=0, nsg=1, transit=False)
    assert status(r) == LoginStatus.INITIATOR_ERROR


def test_anonymous_target_refuses_chap_only() -> None:
    ini = Initiator()
    r = ini.send(first_keys(AuthMethod="CHAP"), csg=0, nsg=1)
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE


def test_security_key_in_operational_stage_is_an_error() -> None:
    ini = Initiator()
    r = ini.send(first_keys(AuthMethod="None"), csg=1, nsg=3)
    assert status(r) == LoginStatus.INITIATOR_ERROR


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_session_and_send_targets_all() -> None:
    m = model()
    ini = Initiator(m)
    r = ini.send([("InitiatorName", INITIATOR), ("SessionType", "Discovery"),
                  ("MaxBurstLength", "262144"), ("HeaderDigest", "None")])
    assert status(r) == 0 and r.final and r.tsih == 0x10
    k = keys(r)
    assert "TargetPortalGroupTag" not in k
    assert k["MaxBurstLength"] == "Irrelevant"
    res = ini.machine.result
    assert res is not None and res.session_type == "Discovery" and res.target is None
    pairs = text_exchange(m, session_type="Discovery", initiator_name=INITIATOR, target=None,
                          local_addr=("10.1.2.3", 3260), pairs=[("SendTargets", "All")],
                          params=res.params)
    assert pairs[:5] == [
        ("TargetName", IQN),
        ("TargetAddress", "10.1.2.3:3260,1"),  # 0.0.0.0 -> the local address
        ("TargetAddress", "10.1.2.3:3261,1"),  # :: -> the local address
        ("TargetAddress", "192.0.2.7:3260,1"),
        ("TargetAddress", "[2001:db8::1]:3260,1"),
    ]
    assert [v for k2, v in pairs if k2 == "TargetName"] == [IQN, SECURE, MUTUAL]


def test_send_targets_wildcard_over_ipv6_and_mapped_ipv4() -> None:
    m = model(portals=[Portal("::", 3260)])
    assert send_targets(m, IQN, ("fe80::1", 3260), INITIATOR) == [
        ("TargetName", IQN), ("TargetAddress", "[fe80::1]:3260,1")]
    assert send_targets(m, IQN, ("::ffff:127.0.0.1", 3260), INITIATOR) == [
        ("TargetName", IQN), ("TargetAddress", "127.0.0.1:3260,1")]
    assert send_targets(m, "iqn.none", ("::1", 3260), INITIATOR) == []


def test_send_targets_in_a_normal_session() -> None:
    m = model()
    t = m.targets[IQN]
    common: dict[str, Any] = {"session_type": "Normal", "initiator_name": INITIATOR, "target": t,
                                  "local_addr": ("10.1.2.3", 3260), "params": OperationalParams()}
    empty = text_exchange(m, pairs=[("SendTargets", "")], **common)
    assert empty[0] == ("TargetName", IQN) and len(empty) == 5
    assert text_exchange(m, pairs=[("SendTargets", "All")], **common) == [
        ("SendTargets", "Reject")]
    assert text_exchange(m, pairs=[("SendTargets", SECURE)], **common) == []


def test_text_exchange_renegotiation_and_unknown_keys() -> None:
    m = model()
    p = OperationalParams(max_recv_data_segment_length=262144)
    out = text_exchange(m, session_type="Normal", initiator_name=INITIATOR,
                        target=m.targets[IQN], local_addr=("10.1.2.3", 3260),
                        pairs=[("MaxRecvDataSegmentLength", "65536"), ("X-foo", "1"),
                               ("MaxBurstLength", "512"), ("TargetAlias", "x")], params=p)
    assert out == [("MaxRecvDataSegmentLength", "262144"), ("X-foo", "NotUnderstood"),
                   ("MaxBurstLength", "Reject"), ("TargetAlias", "Reject")]
    assert p.max_xmit_data_segment_length == 65536


def test_discovery_with_chap() -> None:
    m = model(discovery_auth=Auth(chap=ALICE))
    ini = Initiator(m)
    r = ini.send([("InitiatorName", INITIATOR), ("SessionType", "Discovery"),
                  ("AuthMethod", "None")], csg=0, nsg=1)
    assert status(r) == LoginStatus.AUTHENTICATION_FAILURE


# -- failures ----------------------------------------------------------------------------------


def test_unknown_target_is_not_found() -> None:
    r = Initiator().send(first_keys("iqn.2026-11.org.example:nope"))
    assert status(r) == LoginStatus.NOT_FOUND
    assert (r.status_class, r.status_detail) == (2, 3)


@pytest.mark.parametrize("pairs", [
    [("SessionType", "Normal"), ("TargetName", IQN)],
    [("InitiatorName", INITIATOR), ("SessionType", "Normal")],
    [("InitiatorName", INITIATOR)],
])
def test_missing_parameter(pairs: list[tuple[str, str]]) -> None:
    assert status(Initiator().send(pairs)) == LoginStatus.MISSING_PARAMETER


def test_unknown_session_type() -> None:
    r = Initiator().send(first_keys()[:1] + [("SessionType", "Bogus")])
    assert status(r) == LoginStatus.SESSION_TYPE_NOT_SUPPORTED


@pytest.mark.parametrize(("vmax", "vmin"), [(1, 1), (2, 1)])
def test_unsupported_version(vmax: int, vmin: int) -> None:
    ini = Initiator()
    r = ini.send(first_keys(), version_max=vmax, version_min=vmin)
    assert status(r) == LoginStatus.UNSUPPORTED_VERSION
    assert r.version_max == 0 and r.version_active == 0
    assert ini.machine.failed


def test_version_range_including_zero_is_accepted() -> None:
    r = Initiator().send(first_keys(), version_max=3, version_min=0)
    assert status(r) == 0 and r.version_active == 0


@pytest.mark.parametrize(("csg", "nsg", "transit", "cont"), [
    (1, 2, True, False),  # NSG 2 is reserved
    (1, 1, True, False),  # NSG must exceed CSG
    (1, 0, True, False),
    (3, 3, True, False),  # CSG 3 is not a login stage
    (2, 3, True, False),
    (1, 3, True, True),   # C and T together
])
def test_bad_stage_transitions(csg: int, nsg: int, transit: bool, cont: bool) -> None:
    r = Initiator().send(first_keys(), csg=csg, nsg=nsg, transit=transit, cont=cont)
    assert status(r) == LoginStatus.INITIATOR_ERROR


@pytest.mark.parametrize("field", ["itt", "isid", "cid", "version_max"])
def test_identity_must_not_change_within_a_login(field: str) -> None:
    ini = Initiator()
    ini.send(first_keys(), transit=False)
    fields: dict[str, Any] = {field: 1}
    r = ini.send([], **fields)
    assert status(r) == LoginStatus.INITIATOR_ERROR


def test_csg_must_follow_the_previous_transition() -> None:
    ini = Initiator()
    ini.send(first_keys(AuthMethod="None"), csg=0, nsg=1, transit=False)
    r = ini.send([], csg=1, nsg=3)
    assert status(r) == LoginStatus.INITIATOR_ERROR


def test_malformed_text_is_initiator_error() -> None:
    r = Initiator().send(b"InitiatorName" + b"\0")
    assert status(r) == LoginStatus.INITIATOR_ERROR


def test_key_sent_twice_is_initiator_error() -> None:
    r = Initiator().send(first_keys() + [("MaxBurstLength", "512"), ("MaxBurstLength", "512")])
    assert status(r) == LoginStatus.INITIATOR_ERROR


def test_add_connection_to_unknown_session() -> None:
    r = Initiator().send(first_keys(), tsih=7)
    assert status(r) == LoginStatus.SESSION_DOES_NOT_EXIST


def test_add_connection_to_existing_session_is_too_many_connections() -> None:
    r = Initiator(session_exists=lambda tsih: tsih == 7).send(first_keys(), tsih=7)
    assert status(r) == LoginStatus.TOO_MANY_CONNECTIONS


def test_anything_after_failure_or_completion_fails() -> None:
    ini = Initiator()
    ini.send(first_keys())
    assert ini.machine.done
    assert status(ini.send([])) == LoginStatus.INITIATOR_ERROR


# -- continue PDUs -----------------------------------------------------------------------------


def test_request_text_split_over_continue_pdus() -> None:
    ini = Initiator()
    text = encode_text(first_keys() + OP_KEYS)
    cut = text.index(b"TargetName") + 5  # split in the middle of a key
    r1 = ini.send(text[:cut], transit=False, cont=True)
    assert status(r1) == 0 and not r1.final and not r1.cont and not r1.data
    r2 = ini.send(text[cut:])
    assert status(r2) == 0 and r2.final
    assert keys(r2)["TargetPortalGroupTag"] == "1"
    assert ini.machine.done
    assert ini.stat_sns == [5000, 5001]


def test_long_response_is_split_and_pulled() -> None:
    ini = Initiator()
    # Many unknown keys, each answered NotUnderstood, make an answer longer than 8 KiB.
    many = [(f"X-k{i:04d}", "v") for i in range(700)]
    text = encode_text(first_keys() + many)
    chunks = [text[i:i + 4000] for i in range(0, len(text), 4000)]
    for c in chunks[:-1]:
        assert ini.send(c, transit=False, cont=True).cont is False
    r = ini.send(chunks[-1])
    got = bytearray(r.data)
    assert r.cont and not r.final and len(r.data) <= LOGIN_TEXT_LIMIT
    while r.cont:
        r = ini.send(b"")
        got += r.data
    assert r.final and ini.machine.done
    answer = dict(parse_text(bytes(got)))
    assert answer["X-k0699"] == "NotUnderstood" and len(answer) > 700


def test_data_while_pulling_is_an_error() -> None:
    ini = Initiator()
    many = [(f"X-k{i:04d}", "v") for i in range(700)]
    text = encode_text(first_keys() + many)
    ini.send(text[:6000], transit=False, cont=True)
    ini.send(text[6000:], transit=False)
    r = ini.send([("X-more", "1")])
    assert status(r) == LoginStatus.INITIATOR_ERROR


# -- nothing but Login Responses ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 3), st.integers(0, 3), st.booleans(),
       st.booleans())
def test_arbitrary_bytes_always_get_a_login_response(data: bytes, csg: int, nsg: int,
                                                     transit: bool, cont: bool) -> None:
    ini = Initiator()
    for _ in range(2):
        r = ini.send(data, csg=csg, nsg=nsg, transit=transit, cont=cont)
        assert isinstance(r, LoginResponse)


_KEYNAMES = ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_N",
             "CHAP_R", "CHAP_I", "CHAP_C", "HeaderDigest", "MaxBurstLength", "InitialR2T",
             "MaxRecvDataSegmentLength", "FirstBurstLength", "TargetAlias", "X-a", "Foo",
             "OFMarkInt", "SendTargets"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(
    st.sampled_from(_KEYNAMES),
    st.one_of(st.sampled_from([IQN, SECURE, INITIATOR, "Normal", "Discovery", "CHAP,None",
                               "None", "5", "0x00", "Yes", "512", "All", ""]),
              st.text(alphabet="0123456789abcxyz,~=", max_size=12))),
    max_size=8), min_size=1, max_size=4), st.lists(st.tuples(
        st.integers(0, 3), st.integers(0, 3), st.booleans()), min_size=4, max_size=4))
def test_arbitrary_key_sets_always_get_a_login_response(
        requests: list[list[tuple[str, str]]], flags: list[tuple[int, int, bool]]) -> None:
    ini = Initiator()
    for pairs, (csg, nsg, transit) in zip(requests, flags):
        r = ini.send(pairs, csg=csg, nsg=nsg, transit=transit)
        assert isinstance(r, LoginResponse)
        if status(r):
            assert ini.machine.failed


# -- access control and CHAP policy (issue 5) --------------------------------------------------

ESX1 = "iqn.1998-01.com.vmware:esx1"
ESX2 = "iqn.1998-01.com.vmware:esx2"
SHARED = "iqn.2026-11.org.example:shared"
BOUND = "iqn.2026-11.org.example:bound"
STRICT = "iqn.2026-11.org.example:strict"
ESX1_CHAP = Chap("esx1", "esx1-own-secret")


def acl_model(**kw: Any) -> Model:
    m = model(**kw)
    m.targets[SHARED] = Target(SHARED, Auth(chap=ALICE), initiators=frozenset({ESX1, ESX2}),
                               acls={ESX1: Auth(chap=ESX1_CHAP)})
    m.targets[BOUND] = Target(BOUND, Auth(), portals=(2,))  # 192.0.2.7:3260 only
    m.targets[STRICT] = Target(STRICT, Auth(), require_header_digest=True,
                               require_data_digest=True)
    return m


def named_keys(initiator: str, target: str, **extra: str) -> list[tuple[str, str]]:
    return [("InitiatorName", initiator), ("SessionType", "Normal"),
            ("TargetName", target)] + list(extra.items())


def chap_as(ini: Initiator, initiator: str, target: str, chap: Chap,
            secret: str | None = None) -> LoginResponse:
    r1 = ini.send(named_keys(initiator, target, AuthMethod="CHAP"), csg=0, nsg=1)
    if status(r1):
        return r1
    k = keys(ini.send([("CHAP_A", "7")], csg=0, nsg=1, transit=False))
    ident, challenge = int(k["CHAP_I"]), decode_binary(k["CHAP_C"])
    resp = hashlib.sha256(bytes([ident]) + (secret or chap.secret).encode()
                          + challenge).digest()
    return ini.send([("CHAP_N", chap.user), ("CHAP_R", encode_hex(resp))], csg=0, nsg=1)


def test_initiator_not_in_the_list_is_not_authorized() -> None:
    ini = Initiator(acl_model())
    r = ini.send(named_keys(INITIATOR, SHARED, AuthMethod="CHAP"), csg=0, nsg=1)
    assert (r.status_class, r.status_detail) == (2, 2)
    assert ini.machine.failed and not r.data


def test_listed_initiator_logs_in_with_its_own_credentials_only() -> None:
    m = acl_model()
    assert status(chap_as(Initiator(m), ESX1, SHARED, ESX1_CHAP)) == 0
    # esx1 has its own entry: the target-wide credentials no longer work for it
    assert status(chap_as(Initiator(m), ESX1, SHARED, ALICE)) == 0x0201
    # esx2 has none: it uses the target's
    assert status(chap_as(Initiator(m), ESX2, SHARED, ALICE)) == 0
    # names compare case-folded (RFC 3722)
    assert status(chap_as(Initiator(m), ESX1.upper(), SHARED, ESX1_CHAP)) == 0


def test_target_bound_to_a_portal_does_not_exist_elsewhere() -> None:
    m = acl_model()
    r = Initiator(m, local_addr=("10.1.2.3", 3260)).send(named_keys(INITIATOR, BOUND))
    assert (r.status_class, r.status_detail) == (2, 3)  # §11.13.5: not at this address
    ok = Initiator(m, local_addr=("192.0.2.7", 3260)).send(
        named_keys(INITIATOR, BOUND) + OP_KEYS)
    assert status(ok) == 0 and ok.final


def test_send_targets_names_only_what_the_initiator_may_reach() -> None:
    m = acl_model()

    def names(initiator: str, local: tuple[str, int]) -> list[str]:
        return [v for k, v in send_targets(m, "All", local, initiator) if k == "TargetName"]

    assert names(ESX1, ("10.1.2.3", 3260)) == [IQN, SECURE, MUTUAL, SHARED, STRICT]
    assert names(INITIATOR, ("10.1.2.3", 3260)) == [IQN, SECURE, MUTUAL, STRICT]
    assert BOUND in names(INITIATOR, ("192.0.2.7", 3260))
    # asked by name, a hidden target is answered like one that does not exist
    assert send_targets(m, SHARED, ("10.1.2.3", 3260), INITIATOR) == []
    # the bound target's only address is its own portal
    assert send_targets(m, BOUND, ("192.0.2.7", 3260), INITIATOR) == [
        ("TargetName", BOUND), ("TargetAddress", "192.0.2.7:3260,1")]


def test_digests_required_refuses_an_offer_of_none() -> None:
    ini = Initiator(acl_model())
    r = ini.send(named_keys(INITIATOR, STRICT, HeaderDigest="None", DataDigest="CRC32C"))
    assert (r.status_class, r.status_detail) == (2, 0) and ini.machine.failed


def test_digests_required_picks_crc32c_even_when_the_initiator_prefers_none() -> None:
    ini = Initiator(acl_model())
    r = ini.send(named_keys(INITIATOR, STRICT, HeaderDigest="None,CRC32C",
                            DataDigest="None,CRC32C"))
    assert status(r) == 0 and r.final
    assert keys(r)["HeaderDigest"] == "CRC32C" and keys(r)["DataDigest"] == "CRC32C"
    res = ini.machine.result
    assert res is not None and res.params.header_digest and res.params.data_digest


def test_digests_required_refuses_a_login_that_never_negotiates_them() -> None:
    ini = Initiator(acl_model())
    r = ini.send(named_keys(INITIATOR, STRICT))  # defaults: None (§13.1)
    assert (r.status_class, r.status_detail) == (2, 0) and not ini.machine.done


def test_header_digest_only_requirement_accepts_libiscsi_style_offers() -> None:
    m = acl_model()
    m.targets[STRICT].require_data_digest = False
    ini = Initiator(m)
    r = ini.send(named_keys(INITIATOR, STRICT, HeaderDigest="CRC32C", DataDigest="None"))
    assert status(r) == 0 and ini.machine.done


def test_chap_algorithms_can_be_restricted() -> None:
    m = acl_model(chap_algorithms=(8, 7))
    ini = Initiator(m)
    ini.send(first_keys(SECURE, AuthMethod="CHAP"), csg=0, nsg=1)
    r = ini.send([("CHAP_A", "5,6")], csg=0, nsg=1, transit=False)
    assert status(r) == 0x0201
    ini = Initiator(m)
    ini.send(first_keys(SECURE, AuthMethod="CHAP"), csg=0, nsg=1)
    assert keys(ini.send([("CHAP_A", "5,7")], csg=0, nsg=1, transit=False))["CHAP_A"] == "7"


def test_failed_logins_are_held_back_longer_each_time() -> None:
    m = acl_model(guard=LoginGuard(base_delay=0.25, max_delay=1.0))
    delays = []
    for _ in range(4):
        ini = Initiator(m)
        r = chap_login(ini, SECURE, "5", secret="wrong-secret")
        assert status(r) == 0x0201
        delays.append(ini.machine.take_delay())
        assert ini.machine.take_delay() == 0.0  # read once
    assert delays == [0.25, 0.5, 1.0, 1.0]
    # the right secret now waits as long as a failure would: lateness reveals nothing
    ini = Initiator(m)
    r = chap_login(ini, SECURE, "5")
    assert status(r) == 0 and ini.machine.take_delay() == 1.0


def test_good_logins_are_not_delayed() -> None:
    m = acl_model(guard=LoginGuard(base_delay=5.0, max_delay=5.0))
    ini = Initiator(m)
    assert status(chap_login(ini, SECURE, "5")) == 0
    assert ini.machine.take_delay() == 0.0


def test_mutual_challenge_stolen_from_another_connection_is_refused() -> None:
    m = acl_model()
    other = Initiator(m)
    other.send(first_keys(MUTUAL, AuthMethod="CHAP"), csg=0, nsg=1)
    stolen = decode_binary(keys(other.send([("CHAP_A", "5")], csg=0, nsg=1,
                                           transit=False))["CHAP_C"])
    r = chap_login(Initiator(m), MUTUAL, "5", mutual=(9, stolen))
    assert status(r) == 0x0201


def test_failures_are_logged_with_name_and_address_never_the_secret(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pyscsit.login")
    m = acl_model()
    chap_as(Initiator(m), ESX1, SHARED, ESX1_CHAP, secret="not-" + ESX1_CHAP.secret)
    Initiator(m).send(named_keys("iqn.2026-01.org.evil:x\nFAKE LINE", SHARED))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert ESX1 in lines[0] and "10.9.9.9" in lines[0] and "02/01" in lines[0]
    assert "02/02" in lines[1] and "\n" not in lines[1]
    text = "\n".join(lines)
    for secret in (ESX1_CHAP.secret, ALICE.secret):
        assert secret not in text
