"""The login state machine (RFC 7143 §6, §11.12, §11.13), discovery and Text answers.

Sans-IO: ``LoginMachine.handle(LoginRequest) -> LoginResponse``, one response per request,
including the empty ones that acknowledge or pull Continue PDUs (§6.7). The server sends the
response, closes the connection when ``failed``, and hands ``result`` to the session layer
once ``done``. A login timeout is the server's job, and so is waiting: after a response
whose verdict the failed-login back-off holds back, ``take_delay()`` says how many seconds the
server waits before sending it.

Access control happens on the first complete text, once InitiatorName and TargetName are
known: a target not offered on the portal the connection came in through is "not found"
(02/03: §11.13.5, "does not exist at this address"); an initiator the target does not list is
"not authorized" (02/02). Failed logins are logged at warning level, never with a secret.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum

from pyscsit.chap import ChapAlgorithm, ChapAuthenticator, ChapError
from pyscsit.keys import (
    IRRELEVANT,
    KEYS,
    NOT_UNDERSTOOD,
    REJECT,
    SECURITY_KEYS,
    NegotiationError,
    Negotiator,
    OperationalParams,
    Sender,
    TargetLimits,
    TextError,
    Use,
    encode_text,
    parse_number,
    parse_text,
)
from pyscsit.pdu import LoginRequest, LoginResponse
from pyscsit.target import Auth, Model, Target

log = logging.getLogger("pyscsit.login")

SECURITY_STAGE = 0  # §11.12.3 stage codes
OPERATIONAL_STAGE = 1
FULL_FEATURE_PHASE = 3

LOGIN_TEXT_LIMIT = 8192  # MaxRecvDataSegmentLength during login is the default (§13.12)
MAX_LOGIN_TEXT = 65536  # cap on one (continued) login text we buffer
MAX_LOGIN_PDUS = 128  # a login that never ends is cut off; the server also times it out


class LoginStatus(IntEnum):
    """Status-Class << 8 | Status-Detail (§11.13.5)."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302

    @property
    def status_class(self) -> int:
        return self >> 8

    @property
    def status_detail(self) -> int:
        return self & 0xFF


class LoginFailure(Exception):
    def __init__(self, status: LoginStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class LoginResult:
    session_type: str  # "Discovery" | "Normal"
    initiator_name: str
    initiator_alias: str | None
    target: Target | None
    isid: int
    tsih: int
    cid: int
    exp_cmd_sn: int  # the CmdSN the first full-feature command carries (= the login's CmdSN)
    stat_sn: int  # the StatSN of the first full-feature response (last login StatSN + 1)
    params: OperationalParams


class LoginMachine:
    def __init__(self, model: Model, *, local_addr: tuple[str, int],
                 peer_addr: tuple[str, int], tsih_allocator: Callable[[], int],
                 session_exists: Callable[[int], bool] = lambda tsih: False,
                 max_recv_data_segment_length: int = 262144, cmd_window: int = 64,
                 limits: TargetLimits | None = None) -> None:
        self.model = model
        self.local_addr = local_addr
        self.peer_addr = peer_addr
        self._tsih_allocator = tsih_allocator
        self._session_exists = session_exists
        self._cmd_window = max(1, cmd_window)
        base = limits or TargetLimits()
        if base.max_recv_data_segment_length != max_recv_data_segment_length:
            base = _replace_mrdsl(base, max_recv_data_segment_length)
        self._neg = Negotiator(limits=base)
        self._first: LoginRequest | None = None
        self._stage = SECURITY_STAGE
        self._stat_sn = 0
        self._cmd_sn = 0
        self._pdus = 0
        self._text_in = bytearray()
        self._text_out = b""  # the rest of a split response, pulled by empty requests
        self._out_transit: tuple[bool, int] = (False, 0)
        self._started = False  # the first complete text has been processed
        self._session_type = "Normal"
        self._initiator_name = ""
        self._target: Target | None = None
        self._auth = Auth()
        self._auth_method: str | None = None
        self._chap: ChapAuthenticator | None = None
        self._declared_mrdsl: int | None = None
        self._tpgt_sent = False
        self._target_name = ""  # as asked for, for log lines
        self._delay = 0.0
        self.done = False
        self.failed = False
        self.result: LoginResult | None = None

    # -- entry point ------------------------------------------------------------------------
    def handle(self, req: LoginRequest) -> LoginResponse:
        if self.done or self.failed:
            return self._failure(req, LoginStatus.INITIATOR_ERROR)
        try:
            return self._handle(req)
        except LoginFailure as exc:
            status, why = exc.status, str(exc)
        except (TextError, NegotiationError) as exc:
            status, why = LoginStatus.INITIATOR_ERROR, str(exc)
        except ChapError as exc:
            status, why = LoginStatus.AUTHENTICATION_FAILURE, str(exc)
        self._refused(status, why)
        return self._failure(req, status)

    def take_delay(self) -> float:
        """Seconds the server waits before sending the response just returned (back-off);
        reading it clears it."""
        delay, self._delay = self._delay, 0.0
        return delay

    def _refused(self, status: LoginStatus, why: str) -> None:
        """Log a failed login, and hold back an authentication or authorization failure by
        the back-off of its initiator name and source address."""
        where = self._target_name or ("discovery" if self._session_type == "Discovery"
                                      else "?")
        held = ""
        if status in (LoginStatus.AUTHENTICATION_FAILURE, LoginStatus.AUTHORIZATION_FAILURE):
            self._delay = self.model.guard.failed(self._initiator_name, self.peer_addr[0])
            held = f"; answer held {self._delay:.1f}s" if self._delay else ""
        # ChapError and LoginFailure texts never hold a secret; names are the peer's, so
        # they are shown escaped.
        log.warning("login refused %02x/%02x (%s): initiator %r from %s to %r: %s%s",
                    status.status_class, status.status_detail, status.name.lower(),
                    self._initiator_name or "?", self.peer_addr[0], where,
                    _printable(why), held)

    def _handle(self, req: LoginRequest) -> LoginResponse:
        self._check_header(req)
        if self._text_out:  # §6.7: the initiator pulls the rest of a long response
            if req.data or req.cont:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, "data while pulling")
            return self._send_chunk(req)
        self._text_in += req.data
        if len(self._text_in) > MAX_LOGIN_TEXT:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "login text too long")
        if req.cont:  # §6.7: acknowledge with an empty response and wait for the rest
            return self._response(req, b"", transit=False, nsg=0)
        pairs = parse_text(self._text_in)
        self._text_in.clear()
        if not self._started:
            self._start(req, pairs)
        if self._stage == SECURITY_STAGE:
            answer, transit, nsg = self._security(req, pairs)
        else:
            answer, transit, nsg = self._operational(req, pairs)
        answer = self._first_declarations() + answer
        self._text_out = encode_text(answer)
        self._out_transit = (transit, nsg)
        return self._send_chunk(req)

    # -- header checks (§11.12, §6.3) --------------------------------------------------------
    def _check_header(self, req: LoginRequest) -> None:
        self._pdus += 1
        if self._pdus > MAX_LOGIN_PDUS:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "too many login PDUs")
        first = self._first
        if first is None:
            self._first = req
            self._stat_sn = req.exp_stat_sn  # the first StatSN is ours to choose (§11.13)
            self._cmd_sn = req.cmd_sn
            if req.version_min > 0:  # we speak version 0 only (§11.12.4)
                raise LoginFailure(LoginStatus.UNSUPPORTED_VERSION, "version")
            if req.csg not in (SECURITY_STAGE, OPERATIONAL_STAGE):
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, "bad first CSG")
            self._stage = req.csg
        else:
            # Everything identifying the login stays the same across its PDUs.
            same = (req.itt == first.itt and req.isid == first.isid and req.cid == first.cid
                    and req.tsih == first.tsih and req.version_max == first.version_max
                    and req.version_min == first.version_min)
            if not same:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, "login identity changed")
            self._cmd_sn = req.cmd_sn
        if req.cont and req.final:  # §11.12.2: C=1 requires T=0
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "C and T both set")
        if req.csg != self._stage:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "unexpected CSG")
        if req.final and (req.nsg not in (OPERATIONAL_STAGE, FULL_FEATURE_PHASE)
                          or req.nsg <= req.csg):
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "bad NSG")  # §11.12.3

    # -- the first complete text: who is logging in to what ----------------------------------
    def _start(self, req: LoginRequest, pairs: list[tuple[str, str]]) -> None:
        self._started = True
        keys = dict(pairs)
        name = keys.get("InitiatorName", "")
        if not name:  # §13.5: InitiatorName in the first Login Request
            raise LoginFailure(LoginStatus.MISSING_PARAMETER, "no InitiatorName")
        if len(name.encode()) > 223:  # §4.2.7.1: iSCSI names are at most 223 bytes
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "InitiatorName too long")
        self._initiator_name = name
        session_type = keys.get("SessionType", "Normal")
        if session_type not in ("Normal", "Discovery"):
            raise LoginFailure(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, "SessionType")
        self._session_type = session_type
        self._neg.session_type = session_type
        if session_type == "Normal":
            iqn = keys.get("TargetName", "")
            if not iqn:
                raise LoginFailure(LoginStatus.MISSING_PARAMETER, "no TargetName")
            self._target_name = iqn
            target = self.model.target(iqn)
            if target is None:
                raise LoginFailure(LoginStatus.NOT_FOUND, "no such target")
            if not target.on_portal(self.model.portals, self.local_addr):
                # §11.13.5 02/03: "does not exist at this address"
                raise LoginFailure(LoginStatus.NOT_FOUND,
                                   f"target not offered on {self.local_addr[0]}:"
                                   f"{self.local_addr[1]}")
            if not target.allows(name):
                raise LoginFailure(LoginStatus.AUTHORIZATION_FAILURE,
                                   "initiator not in the target's initiators")
            self._target = target
            self._auth = target.auth_for(name)
            self._require_digests(target)
        else:
            self._auth = self.model.discovery_auth
        if req.tsih != 0:
            # Adding a connection to an existing session (§6.3.1 / §11.12.6): we run one
            # connection per session (MaxConnections=1).
            if session_type == "Discovery" or not self._session_exists(req.tsih):
                raise LoginFailure(LoginStatus.SESSION_DOES_NOT_EXIST, "unknown TSIH")
            raise LoginFailure(LoginStatus.TOO_MANY_CONNECTIONS, "MaxConnections=1")

    # -- security stage (§6.3, §12) ---------------------------------------------------------
    def _security(self, req: LoginRequest,
                  pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool, int]:
        sec = [(k, v) for k, v in pairs if k in SECURITY_KEYS]
        other = [(k, v) for k, v in pairs if k not in SECURITY_KEYS]
        # Operational keys in the security stage are answered too (LIO refuses them; the
        # RFC's stage rules are about when they take effect, which is the same here).
        answer = self._neg.respond(other)
        self._check_digests(answer, final=False)
        chap_keys: dict[str, str] = {}
        for k, v in sec:
            if k == "AuthMethod":
                answer.append(("AuthMethod", self._choose_auth_method(v)))
            else:
                if k in chap_keys:
                    raise LoginFailure(LoginStatus.INITIATOR_ERROR, f"{k} twice")
                chap_keys[k] = v
        if chap_keys:
            if self._chap is None:
                raise LoginFailure(LoginStatus.INITIATOR_ERROR, "CHAP keys without CHAP")
            was_done = self._chap.done
            answer += self._chap.step(chap_keys)
            if self._chap.done and not was_done:
                # The verdict of a name/address that failed lately waits like a failure's.
                self._delay = self.model.guard.succeeded(self._initiator_name,
                                                         self.peer_addr[0])
        transit = False
        if req.final:
            if self._auth_method is None:
                self._choose_auth_method("None")  # AuthMethod's default (§12.1)
            if self._auth_complete():
                transit = True
        # We always pass through the operational stage (as LIO does), so our
        # MaxRecvDataSegmentLength is declared before full feature phase.
        if transit:
            self._stage = OPERATIONAL_STAGE
        return answer, transit, OPERATIONAL_STAGE if transit else 0

    def _choose_auth_method(self, offered: str) -> str:
        if self._auth_method is not None:
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "AuthMethod twice")
        methods = offered.split(",")
        chap = self._auth.chap
        if chap is not None:
            if "CHAP" not in methods:
                raise LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "CHAP required")
            self._auth_method = "CHAP"
            # No chap_algorithms configured (empty): ChapAuthenticator takes its defaults.
            algorithms = tuple(ChapAlgorithm(n) for n in self.model.chap_algorithms)
            self._chap = ChapAuthenticator(chap, self._auth.mutual_chap,
                                           algorithms=algorithms, guard=self.model.guard)
        else:
            if "None" not in methods:
                raise LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "only None offered")
            self._auth_method = "None"
        return self._auth_method

    def _auth_complete(self) -> bool:
        if self._auth.chap is None:
            return True
        return self._chap is not None and self._chap.done

    # -- operational stage (§6.3, §13) -------------------------------------------------------
    def _operational(self, req: LoginRequest,
                     pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool, int]:
        if not self._auth_complete():  # a CHAP target cannot be entered at CSG=1
            raise LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "authentication skipped")
        if any(k in SECURITY_KEYS for k, _ in pairs):
            raise LoginFailure(LoginStatus.INITIATOR_ERROR, "security key after security")
        answer = self._neg.respond(pairs)
        self._check_digests(answer, final=req.final)
        if self._declared_mrdsl is None:
            mrdsl = self._neg.limits.max_recv_data_segment_length
            answer.append(("MaxRecvDataSegmentLength", str(mrdsl)))  # §13.12: declare ours
            self._declared_mrdsl = mrdsl
        if req.final:  # NSG is 3 here: CSG=1 and NSG>CSG were checked
            return answer, True, FULL_FEATURE_PHASE
        return answer, False, 0

    # -- digests a target requires (`digests: required`) --------------------------------------
    def _required_digests(self) -> list[str]:
        t = self._target
        if t is None:
            return []
        return [k for k, on in (("HeaderDigest", t.require_header_digest),
                                ("DataDigest", t.require_data_digest)) if on]

    def _require_digests(self, target: Target) -> None:
        """Offer only CRC32C for a required digest (§13.1), so None is never agreed."""
        lim = self._neg.limits
        if target.require_header_digest:
            lim = replace(lim, header_digests=("CRC32C",))
        if target.require_data_digest:
            lim = replace(lim, data_digests=("CRC32C",))
        self._neg.limits = lim

    def _check_digests(self, answer: list[tuple[str, str]], *, final: bool) -> None:
        for key in self._required_digests():
            # An offer without CRC32C gets Reject from the negotiation; rather than let the
            # session fall back to the default None, the login fails. So does a login that
            # reaches full feature phase without ever negotiating the key.
            if (key, REJECT) in answer or (final and self._neg.agreed.get(key) != "CRC32C"):
                raise LoginFailure(LoginStatus.INITIATOR_ERROR,
                                   f"the target requires {key}=CRC32C")

    def _first_declarations(self) -> list[tuple[str, str]]:
        """TargetPortalGroupTag (and TargetAlias) in the first response of a normal
        session (§13.9)."""
        if self._target is None or self._tpgt_sent:
            return []
        self._tpgt_sent = True
        out = [("TargetPortalGroupTag", str(self._target.tpgt))]
        if self._target.alias:
            out.append(("TargetAlias", self._target.alias))
        return out

    # -- building responses --------------------------------------------------------------------
    def _send_chunk(self, req: LoginRequest) -> LoginResponse:
        chunk, self._text_out = (self._text_out[:LOGIN_TEXT_LIMIT],
                                 self._text_out[LOGIN_TEXT_LIMIT:])
        if self._text_out:  # more to come: C=1, T=0 (§11.13.2)
            return self._response(req, chunk, transit=False, nsg=0, cont=True)
        transit, nsg = self._out_transit
        resp = self._response(req, chunk, transit=transit, nsg=nsg)
        if transit and nsg == FULL_FEATURE_PHASE:
            self._finish(resp)
        return resp

    def _response(self, req: LoginRequest, data: bytes, *, transit: bool, nsg: int,
                  cont: bool = False) -> LoginResponse:
        csg = req.csg
        resp = LoginResponse(
            final=transit, cont=cont, csg=csg, nsg=nsg if transit else 0,
            version_max=0, version_active=0, isid=req.isid, tsih=req.tsih, itt=req.itt,
            stat_sn=self._stat_sn, exp_cmd_sn=self._cmd_sn,
            max_cmd_sn=(self._cmd_sn + self._cmd_window - 1) & 0xFFFFFFFF, data=data)
        self._stat_sn = (self._stat_sn + 1) & 0xFFFFFFFF
        return resp

    def _finish(self, resp: LoginResponse) -> None:
        first = self._first
        assert first is not None
        tsih = self._tsih_allocator() & 0xFFFF
        resp.tsih = tsih  # §11.13.4: the TSIH is given in the final response
        self.done = True
        declared = self._neg.declared
        self.result = LoginResult(
            session_type=self._session_type, initiator_name=self._initiator_name,
            initiator_alias=declared.get("InitiatorAlias"), target=self._target,
            isid=first.isid, tsih=tsih, cid=first.cid, exp_cmd_sn=self._cmd_sn,
            stat_sn=self._stat_sn, params=self._neg.params(declared_mrdsl=self._declared_mrdsl))

    def _failure(self, req: LoginRequest, status: LoginStatus) -> LoginResponse:
        if self._first is None:
            self._first = req
            self._stat_sn = req.exp_stat_sn
            self._cmd_sn = req.cmd_sn
        self.failed = True
        self._text_out = b""
        resp = LoginResponse(
            final=False, cont=False, csg=0, nsg=0, version_max=0, version_active=0,
            isid=req.isid, tsih=0, itt=req.itt, stat_sn=self._stat_sn,
            exp_cmd_sn=self._cmd_sn,
            max_cmd_sn=(self._cmd_sn + self._cmd_window - 1) & 0xFFFFFFFF,
            status_class=status.status_class, status_detail=status.status_detail)
        self._stat_sn = (self._stat_sn + 1) & 0xFFFFFFFF
        return resp


def _replace_mrdsl(limits: TargetLimits, mrdsl: int) -> TargetLimits:
    return replace(limits, max_recv_data_segment_length=mrdsl)


# ---------------------------------------------------------------------------------------------
# Discovery and full-feature Text requests
# ---------------------------------------------------------------------------------------------


def _address_host(host: str) -> str:
    """An address as TargetAddress carries it: IPv6 in brackets, IPv4-mapped unwrapped."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # a DNS name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"[{host}]"
    return host


def _printable(text: str, limit: int = 200) -> str:
    """Peer-controlled text made safe for one log line."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "", "*")


def target_addresses(model: Model, target: Target,
                     local_addr: tuple[str, int]) -> list[str]:
    """One "address:port,tpgt" per portal (§13.8); wildcard portals become the address the
    connection arrived on."""
    out: list[str] = []
    for portal in target.portal_list(model.portals):
        host = local_addr[0] if _is_wildcard(portal.host) else portal.host
        addr = f"{_address_host(host)}:{portal.port},{target.tpgt}"
        if addr not in out:
            out.append(addr)
    return out


def send_targets(model: Model, value: str, local_addr: tuple[str, int],
                 initiator_name: str) -> list[tuple[str, str]]:
    """The answer to SendTargets=All or SendTargets=<iqn> (§13.3, Appendix C).

    Only targets the asking initiator may log into, offered on the portal it asked through,
    are named; an unknown name yields an empty answer, just like a hidden one.
    """
    if value == "All":
        targets = list(model.targets.values())
    else:
        t = model.target(value)
        targets = [t] if t is not None else []
    targets = [t for t in targets
               if t.allows(initiator_name) and t.on_portal(model.portals, local_addr)]
    out: list[tuple[str, str]] = []
    for t in targets:
        out.append(("TargetName", t.iqn))
        out += [("TargetAddress", a) for a in target_addresses(model, t, local_addr)]
    return out


def text_exchange(model: Model, *, session_type: str, initiator_name: str,
                  target: Target | None, local_addr: tuple[str, int],
                  pairs: list[tuple[str, str]],
                  params: OperationalParams) -> list[tuple[str, str]]:
    """Answer the keys of a full-feature Text request (§11.10, §6.2).

    A new MaxRecvDataSegmentLength from the initiator is applied to ``params`` in place
    (``max_xmit_data_segment_length``) and answered with our own declaration. Splitting a
    long answer into Continue PDUs is the session's job.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in pairs:
        if key in seen:
            continue  # answer a key once
        seen.add(key)
        kd = KEYS.get(key)
        if key == "SendTargets":
            out += _send_targets_in_session(model, session_type, initiator_name, target,
                                            local_addr, value)
        elif kd is None:
            out.append((key, NOT_UNDERSTOOD))
        elif kd.sender is Sender.TARGET:
            out.append((key, REJECT))
        elif key == "MaxRecvDataSegmentLength":
            n = parse_number(value)
            if n is None or not kd.lo <= n <= kd.hi:
                out.append((key, REJECT))
            else:
                params.max_xmit_data_segment_length = n
                out.append((key, str(params.max_recv_data_segment_length)))
        elif key == "InitiatorAlias":
            continue  # declarative, Use: ALL
        elif kd.use is Use.ALL:
            out.append((key, IRRELEVANT))
        else:
            out.append((key, REJECT))  # login-only keys cannot be renegotiated (§6.2)
    return out


def _send_targets_in_session(model: Model, session_type: str, initiator_name: str,
                             target: Target | None, local_addr: tuple[str, int],
                             value: str) -> list[tuple[str, str]]:
    if session_type == "Discovery":
        if not value:
            return [("SendTargets", REJECT)]
        return send_targets(model, value, local_addr, initiator_name)
    # Normal session (Appendix C): only the session's own target is reported; an empty
    # value means "this target", and "All" is for discovery sessions.
    if target is None or value == "All":
        return [("SendTargets", REJECT)]
    if value in ("", target.iqn):
        return send_targets(model, target.iqn, local_addr, initiator_name)
    return []
