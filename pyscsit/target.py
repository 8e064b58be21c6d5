"""The live model: Target -> portals -> LUN map -> auth (rtslib's object model, flattened).

config.py turns YAML into this; login.py and session.py only read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyscsit.scsi.lu import LogicalUnit


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


@dataclass(slots=True)
class Target:
    iqn: str
    auth: Auth
    luns: dict[int, LogicalUnit] = field(default_factory=dict)
    alias: str | None = None
    tpgt: int = 1


@dataclass(slots=True)
class Model:
    portals: list[Portal]
    targets: dict[str, Target]
    state_dir: str
    # Discovery sessions: anonymous unless configured otherwise.
    discovery_auth: Auth = field(default_factory=Auth)

    def target(self, iqn: str) -> Target | None:
        return self.targets.get(iqn)
