"""CHAP (RFC 7143 §12.1.3, RFC 1994), checked against independent hashlib computations."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pyscsit.acl import LoginGuard
from pyscsit.chap import (
    ALGORITHM_NAMES,
    ChapAlgorithm,
    ChapAuthenticator,
    ChapError,
    chap_response,
    decode_binary,
    encode_hex,
)
from pyscsit.target import Chap

USER = Chap("alice", "a-long-secret-1")
TARGET = Chap("target0", "another-secret-2")
HASH = {5: hashlib.md5, 6: hashlib.sha1, 7: hashlib.sha256, 8: hashlib.sha3_256}


def golden(alg: int, ident: int, secret: str, challenge: bytes) -> bytes:
    return HASH[alg](bytes([ident]) + secret.encode() + challenge).digest()


def test_rfc1994_golden_vectors() -> None:
    # H(identifier || "secret" || 00 01 .. 0f), values pinned once from hashlib.
    challenge = bytes(range(16))
    assert chap_response(ChapAlgorithm.MD5, 1, b"secret", challenge).hex() == (
        "740e86463bda3a4d7017d6e0fba0699d")
    assert chap_response(ChapAlgorithm.SHA256, 7, b"secret", challenge).hex() == (
        "21056aca6d74a0bdfa8201905995033bc88baeb9c3d4fe84b33e0d99d151ca3a")
    for alg in ChapAlgorithm:
        assert chap_response(alg, 200, b"s3", challenge) == golden(alg, 200, "s3", challenge)


@pytest.mark.parametrize("value", ["0x00ff10", "0X00FF10", "0b" + base64.b64encode(
    b"\x00\xff\x10").decode(), "0B" + base64.b64encode(b"\x00\xff\x10").decode()])
def test_binary_encodings(value: str) -> None:
    assert decode_binary(value) == b"\x00\xff\x10"


def test_odd_hex_digit_count_is_left_padded() -> None:
    assert decode_binary("0xfff") == b"\x0f\xff"


@pytest.mark.parametrize("value", ["", "ff00", "0x", "0xzz", "0b!!!!", "0b", "0x" + "ab" * 1025,
                                   "12345"])
def test_bad_binary_values_fail_authentication(value: str) -> None:
    with pytest.raises(ChapError):
        decode_binary(value)


def make(alg_list: str = "5", mutual: Chap | None = None,
         ) -> tuple[ChapAuthenticator, int, int, bytes]:
    a = ChapAuthenticator(USER, mutual)
    out = dict(a.step({"CHAP_A": alg_list}))
    return a, int(out["CHAP_A"]), int(out["CHAP_I"]), decode_binary(out["CHAP_C"])


@pytest.mark.parametrize(("offer", "chosen"), [
    ("5", 5), ("6", 6), ("7", 7), ("8", 8), ("7,6,5", 7), ("5,7", 5), ("99,6", 6),
    ("Foo,8", 8),
])
def test_algorithm_is_the_initiators_first_supported(offer: str, chosen: int) -> None:
    a, alg, ident, challenge = make(offer)
    assert alg == chosen
    assert 0 <= ident <= 255
    # challenge at least 16 bytes and at least the digest size
    assert len(challenge) >= max(16, HASH[chosen]().digest_size)
    resp = golden(alg, ident, USER.secret, challenge)
    assert a.step({"CHAP_N": "alice", "CHAP_R": encode_hex(resp)}) == []
    assert a.done


def test_challenges_are_random() -> None:
    assert make()[3] != make()[3]


def test_no_common_algorithm_fails() -> None:
    with pytest.raises(ChapError):
        ChapAuthenticator(USER).step({"CHAP_A": "1,2,3"})


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_wrong_secret_fails(alg: int) -> None:
    a, _, ident, challenge = make(str(alg))
    resp = golden(alg, ident, "wrong", challenge)
    with pytest.raises(ChapError):
        a.step({"CHAP_N": "alice", "CHAP_R": encode_hex(resp)})
    assert not a.done


def test_wrong_user_fails() -> None:
    a, alg, ident, challenge = make()
    with pytest.raises(ChapError):
        a.step({"CHAP_N": "mallory",
                "CHAP_R": encode_hex(golden(alg, ident, USER.secret, challenge))})


def test_base64_response_is_accepted() -> None:
    a, alg, ident, challenge = make("7")
    resp = golden(alg, ident, USER.secret, challenge)
    a.step({"CHAP_N": "alice", "CHAP_R": "0b" + base64.b64encode(resp).decode()})
    assert a.done


@pytest.mark.parametrize("keys", [
    {"CHAP_N": "alice"}, {"CHAP_R": "0x00"}, {"CHAP_N": "alice", "CHAP_R": "nothex"},
    {"CHAP_N": "alice", "CHAP_R": "0x00", "CHAP_X": "1"},
])
def test_missing_or_bad_response_keys_fail(keys: dict[str, str]) -> None:
    a, *_ = make()
    with pytest.raises(ChapError):
        a.step(keys)


def test_response_before_algorithm_fails() -> None:
    with pytest.raises(ChapError):
        ChapAuthenticator(USER).step({"CHAP_N": "alice", "CHAP_R": "0x00"})


@pytest.mark.parametrize("alg", [5, 6, 7, 8])
def test_mutual_chap_answer_verified_independently(alg: int) -> None:
    a, _, ident, challenge = make(str(alg), TARGET)
    my_challenge = bytes(range(100, 132))
    out = dict(a.step({"CHAP_N": "alice",
                       "CHAP_R": encode_hex(golden(alg, ident, USER.secret, challenge)),
                       "CHAP_I": "77", "CHAP_C": encode_hex(my_challenge)}))
    assert out["CHAP_N"] == "target0"
    assert decode_binary(out["CHAP_R"]) == golden(alg, 77, TARGET.secret, my_challenge)
    assert a.done


def test_mutual_without_target_credentials_fails() -> None:
    a, alg, ident, challenge = make("5", None)
    with pytest.raises(ChapError):
        a.step({"CHAP_N": "alice",
                "CHAP_R": encode_hex(golden(alg, ident, USER.secret, challenge)),
                "CHAP_I": "1", "CHAP_C": "0x" + "11" * 16})


def test_reflected_challenge_is_refused() -> None:
    a, alg, ident, challenge = make("5", TARGET)
    with pytest.raises(ChapError):
        a.step({"CHAP_N": "alice",
                "CHAP_R": encode_hex(golden(alg, ident, USER.secret, challenge)),
                "CHAP_I": str(ident), "CHAP_C": encode_hex(challenge)})


def test_mutual_with_the_same_secret_both_ways_is_refused() -> None:
    a = ChapAuthenticator(USER, Chap("target0", USER.secret))
    out = dict(a.step({"CHAP_A": "5"}))
    ident, challenge = int(out["CHAP_I"]), decode_binary(out["CHAP_C"])
    with pytest.raises(ChapError):
        a.step({"CHAP_N": "alice",
                "CHAP_R": encode_hex(golden(5, ident, USER.secret, challenge)),
                "CHAP_I": "1", "CHAP_C": "0x" + "22" * 16})


@pytest.mark.parametrize("extra", [{"CHAP_I": "1"}, {"CHAP_C": "0x" + "11" * 16},
                                   {"CHAP_I": "256", "CHAP_C": "0x" + "11" * 16},
                                   {"CHAP_I": "x", "CHAP_C": "0x" + "11" * 16}])
def test_bad_mutual_keys_fail(extra: dict[str, str]) -> None:
    a, alg, ident, challenge = make("5", TARGET)
    with pytest.raises(ChapError):
        a.step({"CHAP_N": "alice",
                "CHAP_R": encode_hex(golden(alg, ident, USER.secret, challenge)), **extra})


def test_wrong_response_gets_no_mutual_answer() -> None:
    # The initiator is checked before the target proves itself: no oracle for strangers.
    a, _alg, _ident, _challenge = make("5", TARGET)
    with pytest.raises(ChapError):
        a.step({"CHAP_N": "alice", "CHAP_R": "0x" + "00" * 16,
                "CHAP_I": "1", "CHAP_C": "0x" + "11" * 16})


def test_secret_not_in_repr_or_errors() -> None:
    a, *_ = make()
    try:
        a.step({"CHAP_N": "alice", "CHAP_R": "0x" + "00" * 16})
    except ChapError as exc:
        assert USER.secret not in str(exc)
    assert USER.secret not in repr(USER)


# -- hardening (issue 5) -----------------------------------------------------------------------


def _answer(alg: int, ident: int, challenge: bytes) -> str:
    return encode_hex(golden(alg, ident, USER.secret, challenge))


@pytest.mark.parametrize("alg", [5, 7])
@pytest.mark.parametrize("cut", [-1, 1])
def test_response_of_the_wrong_length_fails(alg: int, cut: int) -> None:
    # a right digest with a byte dropped or added is not a CHAP_R (RFC 1994 §4.1)
    a, _, ident, challenge = make(str(alg))
    right = golden(alg, ident, USER.secret, challenge)
    wrong = right[:cut] if cut < 0 else right + b"\x00"
    with pytest.raises(ChapError, match="CHAP_R of"):
        a.step({"CHAP_N": "alice", "CHAP_R": encode_hex(wrong)})
    assert not a.done


@pytest.mark.parametrize("name", ["", "u" * 256])
def test_chap_n_of_bad_length_fails(name: str) -> None:
    a, alg, ident, challenge = make()
    with pytest.raises(ChapError):
        a.step({"CHAP_N": name, "CHAP_R": _answer(alg, ident, challenge)})


@pytest.mark.parametrize("value", [
    "0b" + base64.b64encode(bytes(16)).decode().rstrip("="),  # padding stripped
    "0b" + base64.b64encode(bytes(16)).decode()[:-3] + "*==",  # not the alphabet
    "0b " + base64.b64encode(bytes(16)).decode(),  # whitespace
    "0x" + "0" * 31 + "g",
    "0x" + "00" * 2000,  # refused before decoding
])
def test_badly_encoded_binary_values_fail(value: str) -> None:
    with pytest.raises(ChapError):
        decode_binary(value)


def test_chap_i_may_be_hex() -> None:
    a, alg, ident, challenge = make("5", TARGET)
    mine = bytes(range(50, 82))
    out = dict(a.step({"CHAP_N": "alice", "CHAP_R": _answer(alg, ident, challenge),
                       "CHAP_I": "0x2a", "CHAP_C": "0b" + base64.b64encode(mine).decode()}))
    assert decode_binary(out["CHAP_R"]) == golden(5, 42, TARGET.secret, mine)


@pytest.mark.parametrize("size", [1, 8, 15])
def test_short_mutual_challenge_is_refused(size: int) -> None:
    a, alg, ident, challenge = make("5", TARGET)
    with pytest.raises(ChapError, match="at least 16"):
        a.step({"CHAP_N": "alice", "CHAP_R": _answer(alg, ident, challenge),
                "CHAP_I": "9", "CHAP_C": encode_hex(bytes(range(1, size + 1)))})


def test_challenge_issued_on_another_connection_is_refused() -> None:
    # The attacker opens a second connection, gets our challenge there, and hands it back
    # to us as its own mutual challenge here, to make us compute the answer for it.
    guard = LoginGuard()
    other = ChapAuthenticator(USER, TARGET, guard=guard)
    stolen = decode_binary(dict(other.step({"CHAP_A": "5"}))["CHAP_C"])
    a = ChapAuthenticator(USER, TARGET, guard=guard)
    out = dict(a.step({"CHAP_A": "5"}))
    ident, challenge = int(out["CHAP_I"]), decode_binary(out["CHAP_C"])
    with pytest.raises(ChapError, match="reflects"):
        a.step({"CHAP_N": "alice", "CHAP_R": _answer(5, ident, challenge),
                "CHAP_I": "3", "CHAP_C": encode_hex(stolen)})
    assert not a.done


def test_restricted_algorithms() -> None:
    strong = (ChapAlgorithm.SHA3_256, ChapAlgorithm.SHA256)
    with pytest.raises(ChapError, match="no supported CHAP algorithm"):
        ChapAuthenticator(USER, algorithms=strong).step({"CHAP_A": "5,6"})
    out = dict(ChapAuthenticator(USER, algorithms=strong).step({"CHAP_A": "5,7"}))
    assert out["CHAP_A"] == "7"
    assert ALGORITHM_NAMES["SHA3-256"] is ChapAlgorithm.SHA3_256
