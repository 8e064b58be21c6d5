"""Building the live model (target.Model) from a checked ServerConfig: open every backend,
create the state directory, load (or create) LU identities.

Imported lazily where it can be: parsing a config needs none of the I/O layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyscsit.config_types import ConfigError, LunConfig, ServerConfig, TargetConfig
from pyscsit.target import Model, Target

if TYPE_CHECKING:
    from pyscsit.backends.base import Backend
    from pyscsit.scsi.lu import LogicalUnit
    from pyscsit.server import ServerOptions

__all__ = ["build_model", "server_options"]


def server_options(cfg: ServerConfig) -> ServerOptions:
    """The server's timers from ``cfg.timeouts``, and its ``cfg.limits``."""
    from pyscsit.server import ServerOptions

    t = cfg.timeouts
    return ServerOptions(login_timeout=t.login, nop_interval=t.nop_interval,
                         nop_timeout=t.nop_timeout, limits=cfg.limits)


def _open_file(lun: LunConfig) -> Backend:
    from pyscsit.backends.base import BackendError
    from pyscsit.backends.file import FileBackend

    parent = os.path.dirname(lun.path)
    if lun.size is not None and not os.path.lexists(lun.path) and not os.path.isdir(parent):
        try:  # we are creating the image, so its folder too
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as e:
            reason = "a file is in the way" if isinstance(e, FileExistsError) else _reason(e)
            raise BackendError(f"{lun.path}: cannot create its folder: {reason}") from None
    return FileBackend.open(lun.path, lun.size, read_only=lun.read_only)


def _open_block(lun: LunConfig) -> Backend:
    """block, zvol and lvm LUs: a device node, opened exclusively."""
    from pyscsit.backends.base import BackendError
    from pyscsit.backends.block import BlockBackend

    # The identity follows the volume's name, not the device path (zd0 numbering is not
    # stable). A zvol's freed blocks read as zeros; whether an LV's discard does depends on
    # the LV (thin pools zero whole chunks only), so the device says (BLKDISCARDZEROES).
    if lun.backend == "zvol":
        locator, zeroes, make = f"zvol:{lun.dataset}", True, f"zfs create -V SIZE {lun.dataset}"
    elif lun.backend == "lvm":
        locator, zeroes, make = f"lvm:{lun.vg}/{lun.lv}", None, f"lvcreate -n {lun.lv} {lun.vg}"
    else:
        locator, zeroes, make = f"block:{lun.path}", None, ""
    if make and not os.path.lexists(lun.path):
        raise BackendError(f"{lun.path}: device does not exist (create it with `pyscsit lun "
                           f"create` or `{make}`)")
    backend = BlockBackend.open(lun.path, read_only=lun.read_only, direct=lun.direct,
                                locator=locator, discard_zeroes=zeroes)
    if lun.direct and lun.block_size < backend.logical_block_size:
        backend.close()
        raise BackendError(f"{lun.path}: block_size {lun.block_size} is smaller than the "
                           f"device's {backend.logical_block_size}-byte sectors, which O_DIRECT "
                           "needs (set block_size, or direct: false)")
    return backend


#: backend name -> opener. Add a row per backend; parsing reads config.SUPPORTED_BACKENDS.
_OPENERS: dict[str, Callable[[LunConfig], Backend]] = {
    "file": _open_file, "block": _open_block, "zvol": _open_block, "lvm": _open_block}


def build_model(cfg: ServerConfig) -> Model:
    """Open every backend, create the state directory and load (or create) LU identities.

    On any failure the backends opened so far are closed and a ConfigError names the LUN.
    """
    # Imported here so that parsing a config needs none of the I/O layers.
    from pyscsit.backends.base import BackendError
    from pyscsit.scsi.identity import IdentityStore
    from pyscsit.scsi.lu import LogicalUnit
    from pyscsit.scsi.xcopy import LuDirectory

    try:
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(cfg.source, "state_dir",
                          f"cannot create {cfg.state_dir!r}: {e.strerror or e}") from None
    try:
        identities = IdentityStore(cfg.state_dir)
    except (OSError, ValueError) as e:  # never replaced silently: VMware would see new disks
        raise ConfigError(cfg.source, "state_dir", _reason(e)) from None
    opened: list[Backend] = []
    targets: dict[str, Target] = {}
    directory = LuDirectory()  # EXTENDED COPY finds copy targets across the server's LUs
    try:
        for i, tc in enumerate(cfg.targets):
            luns: dict[int, LogicalUnit] = {}
            for number, lun in tc.luns.items():
                where = f"targets[{i}].luns.{number}"
                try:
                    backend = _OPENERS[lun.backend](lun)
                except BackendError as e:  # its message names the path and the reason
                    raise ConfigError(cfg.source, f"{where}.path", str(e)) from None
                except OSError as e:
                    raise ConfigError(cfg.source, f"{where}.path",
                                      f"cannot open {lun.path!r}: {_reason(e)}") from None
                opened.append(backend)
                try:
                    identity = identities.get(backend.locator)
                except (OSError, ValueError) as e:
                    raise ConfigError(cfg.source, "state_dir", f"cannot keep the identity of "
                                      f"{where} in {cfg.state_dir!r}: {_reason(e)}") from None
                # Persistent reservations (APTPL) are kept by LU identity, never by LUN number.
                pr_path = os.path.join(cfg.state_dir, f"pr-{identity.naa.hex()}.json")
                try:
                    luns[number] = LogicalUnit(backend, identity, block_size=lun.block_size,
                                               physical_block_size=lun.physical_block_size,
                                               read_only=lun.read_only, pr_state_path=pr_path)
                except ValueError as e:
                    raise ConfigError(cfg.source, "state_dir", f"{where}: {e}") from None
                directory.add(luns[number])
            targets[tc.iqn] = Target(iqn=tc.iqn, auth=tc.auth.to_auth(), luns=luns,
                                     alias=tc.alias, **_target_model_access(tc))
    except ConfigError:
        for backend in opened:
            backend.close()
        raise
    return Model(portals=list(cfg.portals), targets=targets, state_dir=cfg.state_dir,
                 discovery_auth=cfg.discovery_auth.to_auth(), directory=directory,
                 **_model_policy(cfg))


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _target_model_access(tc: TargetConfig) -> dict[str, Any]:
    """Target(...) keyword arguments for a target's access control."""
    a = tc.access
    return {"initiators": a.initiators, "views": dict(a.views), "portals": a.portals,
            "acls": {name: auth.to_auth() for name, auth in a.acls.items()},
            "require_header_digest": a.header_digest, "require_data_digest": a.data_digest}


def _model_policy(cfg: ServerConfig) -> dict[str, Any]:
    """Model(...) keyword arguments for the login policy."""
    from pyscsit.acl import LoginGuard

    p = cfg.login_policy
    return {"chap_algorithms": p.chap_algorithms,
            "guard": LoginGuard(base_delay=p.backoff_base, max_delay=p.backoff_max)}

