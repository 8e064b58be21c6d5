"""The live model: Target -> portals -> LUN map -> auth (rtslib's object model, flattened).

config.py turns YAML into this; login.py and session.py only read it. Access control is
COMSTAR's and LIO's in one shape: who may log in (``initiators``), with which credentials
(``acls``, else the target's ``auth``), through which portals (``portals``), and which LUs
each initiator sees (``views``; host groups are expanded to names by config.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyscsit.acl import LoginGuard, portal_matches

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit
    from pyscsit.scsi.xcopy import LuDirectory


@dataclass(frozen=True, slots=True)
class Chap:
    user: str
    secret: str

    def __repr__(self) -> str:  # secrets never reach a log line
        return f"Chap(user={self.user!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class Auth:
    """How initiators authenticate. ``chap is None`` means anonymous (``auth: none``)."""

    chap: Chap | None = None
    mutual_chap: Chap | None = None

    @property
    def anonymous(self) -> bool:
        return self.chap is None


@dataclass(frozen=True, slots=True)
class Portal:
    host: str  # "127.0.0.1", "::1", "0.0.0.0"
    port: int = 3260

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _fold(name: str) -> str:
    return name.lower()  # iSCSI names compare after stringprep, which folds case (RFC 3722)


@dataclass(slots=True)
class Target:
    iqn: str
    auth: Auth
    luns: dict[int, LogicalUnit] = field(default_factory=dict)
    alias: str | None = None
    tpgt: int = 1
    #: initiator names that may log in (lower-case); None: anyone who authenticates
    initiators: frozenset[str] | None = None
    #: per-initiator credentials (lower-case name -> Auth), in place of ``auth``
    acls: dict[str, Auth] = field(default_factory=dict)
    #: LUN -> the initiator names that see it; a LUN not listed is seen by everyone allowed
    views: dict[int, frozenset[str]] = field(default_factory=dict)
    #: indices into Model.portals this target is offered on; None: every portal
    portals: tuple[int, ...] | None = None
    require_header_digest: bool = False  # HeaderDigest must negotiate to CRC32C
    require_data_digest: bool = False  # DataDigest must negotiate to CRC32C

    def allows(self, initiator_name: str) -> bool:
        return self.initiators is None or _fold(initiator_name) in self.initiators

    def auth_for(self, initiator_name: str) -> Auth:
        return self.acls.get(_fold(initiator_name), self.auth)

    def luns_for(self, initiator_name: str) -> Mapping[int, LogicalUnit]:
        """The LUN map this initiator sees: masked LUs are simply absent, so REPORT LUNS
        leaves them out and every command to them is answered as for no LU (5/25/00)."""
        if not self.views:
            return self.luns
        name = _fold(initiator_name)
        return {n: lu for n, lu in self.luns.items()
                if n not in self.views or name in self.views[n]}

    def portal_list(self, portals: Sequence[Portal]) -> list[Portal]:
        if self.portals is None:
            return list(portals)
        return [portals[i] for i in self.portals if i < len(portals)]

    def on_portal(self, portals: Sequence[Portal], local_addr: tuple[str, int]) -> bool:
        """Is the target offered where this connection arrived?"""
        if self.portals is None:
            return True
        return any(portal_matches(p.host, p.port, local_addr)
                   for p in self.portal_list(portals))


@dataclass(slots=True)
class Model:
    portals: list[Portal]
    targets: dict[str, Target]
    state_dir: str
    # Discovery sessions: anonymous unless configured otherwise.
    discovery_auth: Auth = field(default_factory=Auth)
    #: IANA CHAP_A numbers accepted, strongest first; empty: chap.DEFAULT_ALGORITHMS
    chap_algorithms: tuple[int, ...] = ()
    #: failed-login back-off and issued CHAP challenges, shared by every connection
    guard: LoginGuard = field(default_factory=LoginGuard)
    #: every LU of the server by NAA, for EXTENDED COPY across LUs (config fills it)
    directory: LuDirectory | None = None

    def target(self, iqn: str) -> Target | None:
        return self.targets.get(iqn)
