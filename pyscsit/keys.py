"""Text key=value codec and the negotiation table (RFC 7143 §6, §13).

``parse_text``/``encode_text`` convert between a data segment and ``(key, value)`` pairs.
``KEYS`` holds one row per §13 key (plus the security keys of §12): its rule, default, range,
scope and where it may be used. ``Negotiator`` answers an initiator's offers from that table
and the target's ``TargetLimits``; ``OperationalParams`` is what the session runs with.
Sans-IO: no sockets, no clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

NOT_UNDERSTOOD = "NotUnderstood"
IRRELEVANT = "Irrelevant"
REJECT = "Reject"

MAX_KEY_LEN = 63  # §6.1
MAX_VALUE_LEN = 255  # §6.1: simple values, unless a key says otherwise
# §12.1.3: CHAP_C/CHAP_R are large-binary-values of up to 1024 bytes (hex: 2 + 2048 chars).
LARGE_VALUE_KEYS = frozenset({"CHAP_C", "CHAP_R"})
MAX_LARGE_VALUE_LEN = 8192

# §6.1: key names are letters, digits and . - + @ _ (X# keys carry a '#').
_KEY_RE = re.compile(r"[A-Za-z0-9.\-+@_#]+")


class TextError(Exception):
    """Malformed key=value text (§6.1). Answered with Login/Text failure, never a crash."""


class NegotiationError(Exception):
    """A negotiation the target cannot continue (§6.2: redeclared key, target-only key sent
    by the initiator, unusable declaration). Login answers 02/00 INITIATOR ERROR."""


def parse_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Split a data segment into ``(key, value)`` pairs (§6.1).

    Every pair ends with a NUL; trailing NULs (padding some initiators leave) are ignored.
    """
    raw = bytes(data)
    if not raw:
        return []
    body = raw.rstrip(b"\0")
    if not body:
        return []
    if len(raw) == len(body):
        raise TextError("key=value text does not end with a NUL")
    pairs: list[tuple[str, str]] = []
    for item in body.split(b"\0"):
        if not item:
            raise TextError("empty key=value item")
        key_b, sep, value_b = item.partition(b"=")
        if not sep:
            raise TextError("key=value item without '='")
        try:
            key = key_b.decode("ascii")
            value = value_b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextError("key or value is not valid text") from exc
        if not key or len(key_b) > MAX_KEY_LEN or not _KEY_RE.fullmatch(key):
            raise TextError("invalid key name")
        limit = MAX_LARGE_VALUE_LEN if key in LARGE_VALUE_KEYS else MAX_VALUE_LEN
        if len(value_b) > limit:
            raise TextError(f"value of {key} longer than {limit} bytes")
        pairs.append((key, value))
    return pairs


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


class Rule(Enum):
    LIST = "list"  # §6.2.1: the acceptor picks the first offered value it supports
    MIN = "min"  # §6.2.2 numerical: the smaller of the two
    MAX = "max"
    AND = "and"  # boolean
    OR = "or"
    DECLARATIVE = "declarative"  # no answer expected
    RANGE = "range"  # OFMarkInt/IFMarkInt "a~b"


class Scope(Enum):
    SESSION = "SW"
    CONNECTION = "CO"


class Use(Enum):
    """Where a key may appear (§13 "Use")."""

    SECURITY = "security"  # security stage only (AuthMethod, CHAP_*)
    LOGIN = "login"  # IO: login only
    LEADING_ONLY = "leading"  # LO: login of the leading connection only
    ALL = "all"  # login and full feature phase (Text)
    FFP = "ffp"  # Text requests only (SendTargets)


class Sender(Enum):
    INITIATOR = "initiator"
    TARGET = "target"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class KeyDef:
    name: str
    rule: Rule
    default: str
    scope: Scope
    use: Use
    sender: Sender = Sender.BOTH
    lo: int = 0
    hi: int = 0
    values: tuple[str, ...] = ()  # the values a LIST key may carry (others are ignored)
    discovery: bool = True  # False: Irrelevant in a discovery session (§13 "Irrelevant when")


_S, _C = Scope.SESSION, Scope.CONNECTION
_YN = ("Yes", "No")
_MAX24 = 2**24 - 1  # 16777215

KEYS: dict[str, KeyDef] = {k.name: k for k in (
    KeyDef("AuthMethod", Rule.LIST, "None", _C, Use.SECURITY,
           values=("KRB5", "SRP", "CHAP", "None")),  # §12.1
    KeyDef("CHAP_A", Rule.LIST, "", _C, Use.SECURITY),
    KeyDef("CHAP_I", Rule.DECLARATIVE, "", _C, Use.SECURITY),
    KeyDef("CHAP_C", Rule.DECLARATIVE, "", _C, Use.SECURITY),
    KeyDef("CHAP_N", Rule.DECLARATIVE, "", _C, Use.SECURITY),
    KeyDef("CHAP_R", Rule.DECLARATIVE, "", _C, Use.SECURITY),
    KeyDef("HeaderDigest", Rule.LIST, "None", _C, Use.LOGIN,
           values=("CRC32C", "None")),  # §13.1
    KeyDef("DataDigest", Rule.LIST, "None", _C, Use.LOGIN, values=("CRC32C", "None")),
    KeyDef("MaxConnections", Rule.MIN, "1", _S, Use.LEADING_ONLY, lo=1, hi=65535,
           discovery=False),  # §13.2
    KeyDef("SendTargets", Rule.DECLARATIVE, "", _S, Use.FFP, Sender.INITIATOR),  # §13.3
    KeyDef("TargetName", Rule.DECLARATIVE, "", _S, Use.LOGIN, Sender.INITIATOR),  # §13.4
    KeyDef("InitiatorName", Rule.DECLARATIVE, "", _S, Use.LOGIN, Sender.INITIATOR),  # §13.5
    KeyDef("TargetAlias", Rule.DECLARATIVE, "", _S, Use.ALL, Sender.TARGET),  # §13.6
    KeyDef("InitiatorAlias", Rule.DECLARATIVE, "", _S, Use.ALL, Sender.INITIATOR),  # §13.7
    KeyDef("TargetAddress", Rule.DECLARATIVE, "", _S, Use.ALL, Sender.TARGET),  # §13.8
    KeyDef("TargetPortalGroupTag", Rule.DECLARATIVE, "", _S, Use.LOGIN, Sender.TARGET,
           lo=0, hi=65535),  # §13.9
    KeyDef("InitialR2T", Rule.OR, "Yes", _S, Use.LEADING_ONLY, values=_YN,
           discovery=False),  # §13.10
    KeyDef("ImmediateData", Rule.AND, "Yes", _S, Use.LEADING_ONLY, values=_YN,
           discovery=False),  # §13.11
    KeyDef("MaxRecvDataSegmentLength", Rule.DECLARATIVE, "8192", _C, Use.ALL,
           lo=512, hi=_MAX24),  # §13.12
    KeyDef("MaxBurstLength", Rule.MIN, "262144", _S, Use.LEADING_ONLY, lo=512, hi=_MAX24,
           discovery=False),  # §13.13
    KeyDef("FirstBurstLength", Rule.MIN, "65536", _S, Use.LEADING_ONLY, lo=512, hi=_MAX24,
           discovery=False),  # §13.14
    KeyDef("DefaultTime2Wait", Rule.MAX, "2", _S, Use.LEADING_ONLY, lo=0, hi=3600),  # §13.15
    KeyDef("DefaultTime2Retain", Rule.MIN, "20", _S, Use.LEADING_ONLY, lo=0,
           hi=3600),  # §13.16
    KeyDef("MaxOutstandingR2T", Rule.MIN, "1", _S, Use.LEADING_ONLY, lo=1, hi=65535,
           discovery=False),  # §13.17
    KeyDef("DataPDUInOrder", Rule.OR, "Yes", _S, Use.LEADING_ONLY, values=_YN,
           discovery=False),  # §13.18
    KeyDef("DataSequenceInOrder", Rule.OR, "Yes", _S, Use.LEADING_ONLY, values=_YN,
           discovery=False),  # §13.19
    KeyDef("ErrorRecoveryLevel", Rule.MIN, "0", _S, Use.LEADING_ONLY, lo=0, hi=2),  # §13.20
    KeyDef("SessionType", Rule.DECLARATIVE, "Normal", _S, Use.LEADING_ONLY,
           Sender.INITIATOR, values=("Discovery", "Normal")),  # §13.21
    KeyDef("TaskReporting", Rule.LIST, "RFC3720", _S, Use.LEADING_ONLY,
           values=("RFC3720", "ResponseFence", "FastAbort")),  # §13.23
    KeyDef("iSCSIProtocolLevel", Rule.MIN, "0", _S, Use.LEADING_ONLY, lo=0,
           hi=31),  # §13.24 / RFC 7144
    # Markers (§13.25, Appendix A of RFC 3720): we never use them.
    KeyDef("OFMarker", Rule.AND, "No", _C, Use.LOGIN, values=_YN),
    KeyDef("IFMarker", Rule.AND, "No", _C, Use.LOGIN, values=_YN),
    KeyDef("OFMarkInt", Rule.RANGE, "2048", _C, Use.LOGIN, lo=1, hi=65535),
    KeyDef("IFMarkInt", Rule.RANGE, "2048", _C, Use.LOGIN, lo=1, hi=65535),
)}

SECURITY_KEYS = frozenset(k for k, d in KEYS.items() if d.use is Use.SECURITY)


@dataclass(frozen=True, slots=True)
class TargetLimits:
    """What the target offers/accepts (its side of every negotiation).

    MaxBurstLength: LIO and tgt default to 256 KiB and accept up to 16 MiB; we answer
    min(theirs, 1 MiB) so a 1 MiB read or write is one sequence. FirstBurstLength 256 KiB
    lets immediate + unsolicited data carry a 256 KiB write without an R2T.
    InitialR2T: our value No makes the OR result the initiator's choice.
    """

    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 1048576
    first_burst_length: int = 262144
    max_outstanding_r2t: int = 16
    max_connections: int = 1
    error_recovery_level: int = 0
    default_time2wait: int = 2
    default_time2retain: int = 20
    initial_r2t: bool = False
    immediate_data: bool = True
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    header_digests: tuple[str, ...] = ("CRC32C", "None")
    data_digests: tuple[str, ...] = ("CRC32C", "None")

    def value(self, key: str) -> str:
        """The target's own value for a negotiated key, as text."""
        own: dict[str, object] = {
            "HeaderDigest": self.header_digests, "DataDigest": self.data_digests,
            "MaxConnections": self.max_connections, "InitialR2T": self.initial_r2t,
            "ImmediateData": self.immediate_data, "MaxBurstLength": self.max_burst_length,
            "FirstBurstLength": self.first_burst_length,
            "DefaultTime2Wait": self.default_time2wait,
            "DefaultTime2Retain": self.default_time2retain,
            "MaxOutstandingR2T": self.max_outstanding_r2t,
            "DataPDUInOrder": self.data_pdu_in_order,
            "DataSequenceInOrder": self.data_sequence_in_order,
            "ErrorRecoveryLevel": self.error_recovery_level,
            "TaskReporting": ("RFC3720",), "iSCSIProtocolLevel": 0,
            "OFMarker": False, "IFMarker": False,
        }
        v = own.get(key, KEYS[key].default)
        if isinstance(v, bool):
            return "Yes" if v else "No"
        if isinstance(v, tuple):
            return ",".join(v)
        return str(v)


@dataclass(slots=True)
class OperationalParams:
    """The session/connection parameters in force after login (defaults: RFC 7143 §13)."""

    header_digest: bool = False
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_recv_data_segment_length: int = 8192  # what we receive: our declaration
    max_xmit_data_segment_length: int = 8192  # the initiator's MaxRecvDataSegmentLength
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    default_time2wait: int = 2
    default_time2retain: int = 20
    error_recovery_level: int = 0


def parse_number(value: str) -> int | None:
    """A §6.1 numerical value (decimal or 0x hex, at most 64 bits), or None."""
    if value[:2] in ("0x", "0X"):
        digits, base = value[2:], 16
        ok = all(c in _HEX for c in digits)
    else:
        digits, base = value, 10
        ok = value.isascii() and value.isdigit()
    if not ok or not digits or len(digits) > 20:
        return None
    n = int(digits, base)
    return n if n < 2**64 else None


_HEX = frozenset("0123456789abcdefABCDEF")


def _range_ok(value: str, lo: int, hi: int) -> bool:
    a, sep, b = value.partition("~")
    x, y = parse_number(a), parse_number(b)
    return bool(sep) and x is not None and y is not None and lo <= x <= y <= hi


@dataclass
class Negotiator:
    """Answers the initiator's keys across one login (and records the outcome).

    Security keys (AuthMethod, CHAP_*) are the authenticator's business, not this class's.
    """

    session_type: str = "Normal"
    limits: TargetLimits = field(default_factory=TargetLimits)
    agreed: dict[str, str] = field(default_factory=dict)  # negotiated results
    declared: dict[str, str] = field(default_factory=dict)  # the initiator's declarations
    _seen: set[str] = field(default_factory=set)

    def respond(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The answers to one request's keys, in order (FirstBurstLength last, because
        InitialR2T/ImmediateData decide whether it is relevant, §13.14)."""
        out: list[tuple[str, str]] = []
        deferred: list[tuple[KeyDef, str]] = []
        for key, value in pairs:
            if key in self._seen:  # §6.2: no key is negotiated or declared twice
                raise NegotiationError(f"{key} sent twice")
            self._seen.add(key)
            kd = KEYS.get(key)
            if kd is None:  # X-, X# and unknown keys (§6.2)
                out.append((key, NOT_UNDERSTOOD))
                continue
            if kd.use is Use.SECURITY:
                raise NegotiationError(f"{key} outside the security stage")
            if kd.name == "FirstBurstLength":
                deferred.append((kd, value))
                continue
            answer = self._answer(kd, value)
            if answer is not None:
                out.append((key, answer))
        for kd, value in deferred:
            answer = self._answer(kd, value)
            if answer is not None:
                out.append((kd.name, answer))
        return out

    def _answer(self, kd: KeyDef, value: str) -> str | None:
        if kd.sender is Sender.TARGET:
            raise NegotiationError(f"{kd.name} may only be sent by a target")
        if kd.use is Use.FFP:
            return IRRELEVANT  # SendTargets belongs in a Text request
        if kd.rule is Rule.DECLARATIVE:
            if kd.hi:  # MaxRecvDataSegmentLength
                n = parse_number(value)
                if n is None or not kd.lo <= n <= kd.hi:
                    raise NegotiationError(f"{kd.name}={value} is out of range")
            self.declared[kd.name] = value
            return None
        if self.session_type == "Discovery" and not kd.discovery:
            return IRRELEVANT
        if kd.name == "FirstBurstLength" and self._get("InitialR2T") == "Yes" \
                and self._get("ImmediateData") == "No":
            return IRRELEVANT  # §13.14
        result = self._negotiate(kd, value)
        if result != REJECT and kd.rule is not Rule.RANGE:
            self.agreed[kd.name] = result
        return result

    def _negotiate(self, kd: KeyDef, value: str) -> str:
        ours = self.limits.value(kd.name)
        if kd.rule is Rule.LIST:
            supported = ours.split(",")
            for item in value.split(","):
                if item in supported:
                    return item
            return REJECT
        if kd.rule in (Rule.AND, Rule.OR):
            if value not in _YN:
                return REJECT
            theirs, mine = value == "Yes", ours == "Yes"
            res = (theirs and mine) if kd.rule is Rule.AND else (theirs or mine)
            return "Yes" if res else "No"
        if kd.rule is Rule.RANGE:
            # Markers are off (OFMarker/IFMarker=No), so their intervals do not matter.
            return IRRELEVANT if _range_ok(value, kd.lo, kd.hi) else REJECT
        n = parse_number(value)
        if n is None or not kd.lo <= n <= kd.hi:
            return REJECT  # §6.2: out-of-range numerical value
        mine_n = int(ours)
        res_n = min(n, mine_n) if kd.rule is Rule.MIN else max(n, mine_n)
        if kd.name == "FirstBurstLength":  # §13.14: must not exceed MaxBurstLength
            res_n = min(res_n, int(self._get("MaxBurstLength")))
        return str(res_n)

    def _get(self, key: str) -> str:
        return self.agreed.get(key, KEYS[key].default)

    def params(self, *, declared_mrdsl: int | None) -> OperationalParams:
        """The outcome. ``declared_mrdsl``: the MaxRecvDataSegmentLength we declared, if we
        did (otherwise the 8192 default is what the initiator believes we accept)."""
        g = self._get
        p = OperationalParams(
            header_digest=g("HeaderDigest") == "CRC32C",
            data_digest=g("DataDigest") == "CRC32C",
            max_connections=int(g("MaxConnections")),
            initial_r2t=g("InitialR2T") == "Yes",
            immediate_data=g("ImmediateData") == "Yes",
            max_recv_data_segment_length=declared_mrdsl or 8192,
            max_xmit_data_segment_length=parse_number(
                self.declared.get("MaxRecvDataSegmentLength", "8192")) or 8192,
            max_burst_length=int(g("MaxBurstLength")),
            first_burst_length=int(g("FirstBurstLength")),
            max_outstanding_r2t=int(g("MaxOutstandingR2T")),
            data_pdu_in_order=g("DataPDUInOrder") == "Yes",
            data_sequence_in_order=g("DataSequenceInOrder") == "Yes",
            default_time2wait=int(g("DefaultTime2Wait")),
            default_time2retain=int(g("DefaultTime2Retain")),
            error_recovery_level=int(g("ErrorRecoveryLevel")),
        )
        p.first_burst_length = min(p.first_burst_length, p.max_burst_length)
        return p
