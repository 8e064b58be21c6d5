"""CHAP for iSCSI login, target side (RFC 7143 §12.1.3, RFC 1994).

Response = H(identifier byte || secret || challenge). Algorithms are the IANA iSCSI CHAP
numbers: 5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256. One-way: the target challenges, the initiator
answers. Mutual: the initiator also sends CHAP_I/CHAP_C and the target answers with its own
credentials. Secrets never appear in exceptions or reprs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from enum import Enum, IntEnum
from typing import TYPE_CHECKING

from pyscsit.keys import REJECT, parse_number
from pyscsit.target import Chap

if TYPE_CHECKING:
    from pyscsit.acl import LoginGuard

MAX_BINARY_LEN = 1024  # §12.1.3: CHAP_C and CHAP_R decode to at most 1024 bytes
MIN_CHALLENGE_LEN = 16  # ours and the initiator's: shorter ones make precomputation cheap
MAX_NAME_LEN = 255  # CHAP_N: more than any real user name, bounded for logs and compares


class ChapError(Exception):
    """Authentication failed (Login status 02/01). The message is safe to log."""


class ChapAlgorithm(IntEnum):
    MD5 = 5
    SHA1 = 6
    SHA256 = 7
    SHA3_256 = 8

    @property
    def hash_name(self) -> str:
        return _HASH_NAMES[self]

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size


_HASH_NAMES = {ChapAlgorithm.MD5: "md5", ChapAlgorithm.SHA1: "sha1",
               ChapAlgorithm.SHA256: "sha256", ChapAlgorithm.SHA3_256: "sha3_256"}

#: the names config files use (`chap_algorithms: [SHA-256, SHA3-256]`)
ALGORITHM_NAMES: dict[str, ChapAlgorithm] = {
    "MD5": ChapAlgorithm.MD5, "SHA-1": ChapAlgorithm.SHA1,
    "SHA-256": ChapAlgorithm.SHA256, "SHA3-256": ChapAlgorithm.SHA3_256}

# What the target accepts, strongest first (the order we would propose in, were we to offer).
DEFAULT_ALGORITHMS: tuple[ChapAlgorithm, ...] = (
    ChapAlgorithm.SHA3_256, ChapAlgorithm.SHA256, ChapAlgorithm.SHA1, ChapAlgorithm.MD5)


def chap_response(algorithm: ChapAlgorithm, identifier: int, secret: bytes,
                  challenge: bytes) -> bytes:
    """RFC 1994 §4.1: H(Identifier || secret || Challenge)."""
    h = hashlib.new(algorithm.hash_name)
    h.update(bytes((identifier,)))
    h.update(secret)
    h.update(challenge)
    return h.digest()


def decode_binary(value: str) -> bytes:
    """A §6.1 binary value: 0x/0X hex or 0b/0B base64. Anything else is an auth failure."""
    if len(value) > 2 + 2 * MAX_BINARY_LEN:  # longer than any valid encoding: don't decode
        raise ChapError("binary value of bad length")
    prefix, body = value[:2], value[2:]
    try:
        if prefix in ("0x", "0X"):
            if len(body) % 2:  # §6.1 allows an odd digit count: the first nibble is implied 0
                body = "0" + body
            raw = binascii.unhexlify(body)
        elif prefix in ("0b", "0B"):
            raw = base64.b64decode(body, validate=True)
        else:
            raise ChapError("binary value without 0x/0b prefix")
    except (binascii.Error, ValueError) as exc:
        raise ChapError("badly encoded binary value") from exc
    if not raw or len(raw) > MAX_BINARY_LEN:
        raise ChapError("binary value of bad length")
    return raw


def encode_hex(raw: bytes) -> str:
    return "0x" + raw.hex()


class _State(Enum):
    AWAIT_ALGORITHM = "await CHAP_A"
    AWAIT_RESPONSE = "await CHAP_N/CHAP_R"
    DONE = "done"


class ChapAuthenticator:
    """The target's half of one CHAP exchange (§12.1.3).

    ``step(keys)`` takes the CHAP_* keys of one request and returns the keys to answer with;
    any failure raises ChapError. ``done`` turns True once the initiator is authenticated
    (and, if it asked, the target has answered its challenge). With a ``guard``, every
    challenge issued is remembered there, and a mutual-CHAP challenge equal to any of them
    (issued on this connection or another) is refused as a reflection.
    """

    def __init__(self, chap: Chap, mutual: Chap | None = None, *,
                 algorithms: tuple[ChapAlgorithm, ...] = DEFAULT_ALGORITHMS,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes,
                 guard: LoginGuard | None = None) -> None:
        self._chap = chap
        self._mutual = mutual
        self._algorithms = algorithms or DEFAULT_ALGORITHMS
        self._token_bytes = token_bytes
        self._guard = guard
        self._state = _State.AWAIT_ALGORITHM
        self._algorithm = ChapAlgorithm.MD5
        self._identifier = 0
        self._challenge = b""

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def algorithm(self) -> ChapAlgorithm:
        return self._algorithm

    @property
    def challenge(self) -> bytes:
        return self._challenge

    @property
    def identifier(self) -> int:
        return self._identifier

    def step(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        if not keys:
            return []
        if self._state is _State.AWAIT_ALGORITHM:
            if set(keys) != {"CHAP_A"}:
                raise ChapError("expected CHAP_A first")
            return self._select(keys["CHAP_A"])
        if self._state is _State.AWAIT_RESPONSE:
            return self._verify(keys)
        raise ChapError("CHAP keys after CHAP completed")

    def _select(self, offered: str) -> list[tuple[str, str]]:
        # §12.1.3: CHAP_A is a list; take the first of the initiator's we support.
        chosen: ChapAlgorithm | None = None
        for item in offered.split(","):
            n = parse_number(item)
            if n is not None and n in {a.value for a in self._algorithms}:
                chosen = ChapAlgorithm(n)
                break
        if chosen is None:
            raise ChapError(f"no supported CHAP algorithm in CHAP_A={offered[:64]}"
                            if offered != REJECT else "CHAP_A rejected")
        self._algorithm = chosen
        self._identifier = self._token_bytes(1)[0]
        # From `secrets`; at least 16 bytes, and no shorter than the digest.
        self._challenge = self._token_bytes(max(MIN_CHALLENGE_LEN, chosen.digest_size))
        if self._guard is not None:
            self._guard.issued(self._challenge)
        self._state = _State.AWAIT_RESPONSE
        return [("CHAP_A", str(chosen.value)), ("CHAP_I", str(self._identifier)),
                ("CHAP_C", encode_hex(self._challenge))]

    def _verify(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        allowed = {"CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"}
        if not set(keys) <= allowed or "CHAP_N" not in keys or "CHAP_R" not in keys:
            raise ChapError("expected CHAP_N and CHAP_R")
        if ("CHAP_I" in keys) != ("CHAP_C" in keys):
            raise ChapError("mutual CHAP needs both CHAP_I and CHAP_C")
        if not keys["CHAP_N"] or len(keys["CHAP_N"].encode()) > MAX_NAME_LEN:
            raise ChapError("CHAP_N of bad length")
        got = decode_binary(keys["CHAP_R"])
        if len(got) != self._algorithm.digest_size:  # RFC 1994 §4.1: one digest, exactly
            raise ChapError(f"CHAP_R of {len(got)} bytes; {self._algorithm.name} gives "
                            f"{self._algorithm.digest_size}")
        want = chap_response(self._algorithm, self._identifier,
                             self._chap.secret.encode(), self._challenge)
        # Compare both in constant time, and both always, so timing tells nothing.
        name_ok = hmac.compare_digest(keys["CHAP_N"].encode(), self._chap.user.encode())
        resp_ok = hmac.compare_digest(got, want)
        if not (name_ok and resp_ok):
            raise ChapError("CHAP_N/CHAP_R do not match the configured credentials")
        out: list[tuple[str, str]] = []
        if "CHAP_I" in keys:
            out = self._answer_mutual(keys["CHAP_I"], keys["CHAP_C"])
        self._state = _State.DONE
        return out

    def _answer_mutual(self, chap_i: str, chap_c: str) -> list[tuple[str, str]]:
        mutual = self._mutual
        if mutual is None:
            raise ChapError("initiator asked for mutual CHAP; target has no credentials")
        ident = parse_number(chap_i)  # §12.1.3: a number, 0..255 (decimal or 0x hex)
        if ident is None or ident > 255:
            raise ChapError("bad CHAP_I")
        challenge = decode_binary(chap_c)
        if len(challenge) < MIN_CHALLENGE_LEN:
            raise ChapError(f"mutual CHAP challenge of {len(challenge)} bytes (at least "
                            f"{MIN_CHALLENGE_LEN})")
        # §12.1.3: a challenge equal to one we issued is a reflection attack, whether it
        # was issued here or on another connection (which may be the attacker's own).
        if hmac.compare_digest(challenge, self._challenge) or (
                self._guard is not None and self._guard.was_issued(challenge)):
            raise ChapError("mutual CHAP challenge reflects a challenge the target issued")
        # §12.1.3: a secret authenticating initiators must not authenticate targets.
        if hmac.compare_digest(mutual.secret.encode(), self._chap.secret.encode()):
            raise ChapError("mutual CHAP secret equals the initiator's secret")
        resp = chap_response(self._algorithm, ident, mutual.secret.encode(), challenge)
        return [("CHAP_N", mutual.user), ("CHAP_R", encode_hex(resp))]
