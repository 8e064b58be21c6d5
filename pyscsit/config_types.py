"""The typed config: frozen dataclasses that config.py builds from YAML, and its error.

Every value here has been checked already; building the live model (config_build) trusts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyscsit.limits import Limits
from pyscsit.target import Auth, Chap, Portal


class ConfigError(Exception):
    """A config problem, as one line: ``FILE: key.path: what is wrong``.

    Messages never contain a CHAP secret.
    """

    def __init__(self, source: str, key_path: str, problem: str) -> None:
        self.source = source
        self.key_path = key_path
        self.problem = " ".join(problem.split())  # one line, whatever the cause said
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {self.problem}")


# -- the typed config ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LunConfig:
    backend: str
    path: str  # absolute
    size: int | None = None  # bytes; None = use an existing file as it is
    block_size: int = 512
    # None: what the backend says (4096 for files: 512e); 512 makes a 512n LU
    physical_block_size: int | None = None
    read_only: bool = False
    # block / zvol / lvm (issue 4). For zvol and lvm, ``path`` is the device, found under
    # the zfs:/lvm: dev_root; sparse/volblocksize/thinpool record how the volume was made.
    direct: bool = False  # O_DIRECT
    dataset: str | None = None  # zvol: pool/volume
    sparse: bool = False  # zvol: created with -s
    volblocksize: int | None = None  # zvol: -b
    vg: str | None = None  # lvm
    lv: str | None = None  # lvm
    thinpool: str | None = None  # lvm: thin LV from this pool of the same VG


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """Where a storage tool and its device nodes are (``zfs:`` / ``lvm:``)."""

    command: str
    dev_root: str  # absolute


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``chap is None``: anonymous (``auth: none``)."""

    chap: Chap | None = None
    mutual_chap: Chap | None = None

    def to_auth(self) -> Auth:
        return Auth(chap=self.chap, mutual_chap=self.mutual_chap)


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """A target's access control. Names are lower-case, host groups already expanded."""

    initiators: frozenset[str] | None = None  # None: anyone who authenticates
    acls: Mapping[str, AuthConfig] = field(default_factory=dict)
    views: Mapping[int, frozenset[str]] = field(default_factory=dict)
    portals: tuple[int, ...] | None = None  # indices into ServerConfig.portals
    header_digest: bool = False  # required
    data_digest: bool = False


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """Server-wide login policy."""

    host_groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    chap_algorithms: tuple[int, ...] = ()  # IANA numbers; empty: every supported one
    backoff_base: float = 1.0  # acl.DEFAULT_BASE_DELAY
    backoff_max: float = 16.0  # acl.DEFAULT_MAX_DELAY


@dataclass(frozen=True, slots=True)
class TargetConfig:
    iqn: str
    auth: AuthConfig
    luns: Mapping[int, LunConfig]
    alias: str | None = None
    access: AccessConfig = field(default_factory=AccessConfig)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Connection timers, in seconds (the defaults are server.ServerOptions')."""

    login: float = 30.0  # accept -> full feature phase
    nop_interval: float = 15.0  # idle time before the target pings (NOP-In)
    nop_timeout: float = 15.0  # time to answer that ping before the connection is dropped


@dataclass(frozen=True, slots=True)
class ServerConfig:
    state_dir: str  # absolute
    portals: tuple[Portal, ...]
    targets: tuple[TargetConfig, ...]
    discovery_auth: AuthConfig = field(default_factory=AuthConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    zfs: ToolConfig = ToolConfig("zfs", "/dev/zvol")
    lvm: ToolConfig = ToolConfig("lvm", "/dev")
    login_policy: LoginPolicy = field(default_factory=LoginPolicy)
    #: where this came from, for error messages (a file name, or the default's description)
    source: str = "<config>"
