"""config.py: YAML -> ServerConfig -> Model, and the one-line errors a user sees."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest
import yaml

from pyscsit.config import (
    DEFAULT_IQN,
    AuthConfig,
    ConfigError,
    LunConfig,
    ServerConfig,
    Timeouts,
    build_model,
    check_iscsi_name,
    default_config,
    load_config,
    parse_portal,
    parse_size,
    server_options,
)
from pyscsit.target import Chap, Portal

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
state_dir: state
portals: ["0.0.0.0:3260", "[::]:3260"]
targets:
  - iqn: iqn.2026-11.org.example:disk0
    alias: disk0
    auth:
      chap: {user: alice, secret: a-long-secret}
      mutual_chap: {user: target0, secret: another-secret}
    luns:
      1: {backend: file, path: disks/disk0.img, size: 40GiB}
      2: {backend: file, path: /srv/ro.img, size: 1G, block_size: 4096, read_only: true}
  - iqn: eui.0123456789abcdef
    auth: none
    luns:
      0: {backend: file, path: scratch.img, size: 100MiB}
"""


def write(tmp_path: Path, text: str, name: str = "pyscsit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message.removeprefix(f"{path}: ")


def edit(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# -- good configs ---------------------------------------------------------------------------


def test_contract_example_loads_into_typed_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.state_dir == str(tmp_path / "state")
    assert cfg.portals == (Portal("0.0.0.0", 3260), Portal("::", 3260))
    assert cfg.discovery_auth == AuthConfig()
    disk0, scratch = cfg.targets
    assert disk0.iqn == "iqn.2026-11.org.example:disk0"
    assert disk0.alias == "disk0"
    assert disk0.auth == AuthConfig(Chap("alice", "a-long-secret"),
                                    Chap("target0", "another-secret"))
    assert dict(disk0.luns) == {
        1: LunConfig("file", str(tmp_path / "disks/disk0.img"), 40 << 30),
        2: LunConfig("file", "/srv/ro.img", 1 << 30, block_size=4096, read_only=True),
    }
    assert scratch.auth.to_auth().anonymous
    assert scratch.luns[0].size == 100 << 20


def test_relative_paths_follow_the_config_file_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", GOOD)
    monkeypatch.chdir("/")
    cfg = load_config(os.path.relpath(path, "/"))
    assert cfg.state_dir == str(tmp_path / "conf/state")
    assert cfg.targets[1].luns[0].path == str(tmp_path / "conf/scratch.img")


def test_json_style_quoted_lun_numbers(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, edit("      1: {backend", '      "1": {backend')))
    assert sorted(cfg.targets[0].luns) == [1, 2]
    text = edit("      2: {backend", '      "1": {backend')
    assert error_of(tmp_path, text) == "targets[0].luns.1: LUN 1 is listed twice"


def test_discovery_auth_and_yaml_anchors(tmp_path: Path) -> None:
    text = edit("targets:\n", "discovery_auth: &d\n  chap: {user: disc, secret: discovery-secret}\n"
                "targets:\n")
    text = edit("    auth: none\n", "    auth: *d\n", text)
    cfg = load_config(write(tmp_path, text))
    assert cfg.discovery_auth.chap == Chap("disc", "discovery-secret")
    assert cfg.targets[1].auth == cfg.discovery_auth


@pytest.mark.parametrize("name", ["quickstart", "lab", "esxi"])
def test_shipped_example_configs_are_valid(name: str) -> None:
    cfg = load_config(REPO / "conf" / f"{name}.yaml")
    assert cfg.targets and cfg.portals


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert "a-long-secret" not in repr(cfg)
    assert "another-secret" not in repr(cfg)


# -- value parsers -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    (512, 512), ("512", 512), ("512B", 512), ("4K", 4096), ("4KiB", 4096), ("4k", 4096),
    ("100MiB", 100 << 20), ("1G", 1 << 30), ("40GiB", 40 << 30), ("1T", 1 << 40),
    ("2TiB", 2 << 40), ("1.5G", 3 << 29), (" 8 GiB ", 8 << 30),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "problem"), [
    ("40Gx", "'40Gx' is not a size (use bytes, or e.g. 100MiB, 40GiB, 1T)"),
    ("1GB", "'1GB' is not a size (sizes are powers of 1024: write GiB or G)"),
    ("G", "'G' is not a size (use bytes, or e.g. 100MiB, 40GiB, 1T)"),
    ("-1G", "'-1G' is not a size (use bytes, or e.g. 100MiB, 40GiB, 1T)"),
    ("1.3", "'1.3' is not a whole number of bytes"),
    (0, "0 is not a size (it must be more than 0 bytes)"),
    (-512, "-512 is not a size (it must be more than 0 bytes)"),
    (True, "True is not a size (use bytes, or e.g. 100MiB, 40GiB, 1T)"),
    (1.5, "1.5 is not a size (use bytes, or e.g. 100MiB, 40GiB, 1T)"),
])
def test_nonsense_sizes(text: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value) == problem


@pytest.mark.parametrize(("text", "portal"), [
    ("127.0.0.1:3260", Portal("127.0.0.1", 3260)),
    ("0.0.0.0", Portal("0.0.0.0", 3260)),
    ("[::]:860", Portal("::", 860)),
    ("[::1]", Portal("::1", 3260)),
    ("::1", Portal("::1", 3260)),
    ("localhost:3261", Portal("localhost", 3261)),
    ("127.0.0.1:0", Portal("127.0.0.1", 0)),
])
def test_portals(text: str, portal: Portal) -> None:
    assert parse_portal(text) == portal


@pytest.mark.parametrize(("text", "problem"), [
    ("1.2.3.4:x", "'x' in '1.2.3.4:x' is not a port number (0..65535)"),
    ("1.2.3.4:65536", "'65536' in '1.2.3.4:65536' is not a port number (0..65535)"),
    (":3260", "':3260' has no host (use 0.0.0.0:3260 for every address)"),
    ("[1.2.3.4]:1", "'1.2.3.4' in '[1.2.3.4]:1' is not an IPv6 address"),
    ("[::1", "'[::1' is not a portal (write IPv6 as \"[::1]:3260\")"),
    ("::g:1", "'::g:1' is not a portal (write IPv6 as \"[::1]:3260\")"),
    ("my host", "'my host' in 'my host' is not an IP address or host name"),
    (3260, "3260 is not a portal (write \"host:port\")"),
])
def test_bad_portals(text: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_portal(text)
    assert str(info.value) == problem


@pytest.mark.parametrize("name", [
    "iqn.2026-11.org.example:disk0", "iqn.1994-05.com.redhat:5e2c6d9a1f",
    "iqn.2001-04.com.example", "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
    "eui.02004567a425678d", "naa.52004567ba64678d",
    "naa.62004567ba64678d0123456789abcdef",
])
def test_good_iscsi_names(name: str) -> None:
    assert check_iscsi_name(name) == name


@pytest.mark.parametrize(("name", "problem"), [
    ("iqn.2026-11.Org.Example:disk0",
     "'iqn.2026-11.Org.Example:disk0' must be lower-case: write 'iqn.2026-11.org.example:disk0'"),
    ("iqn.2026-13.org.example", ("'iqn.2026-13.org.example' is not an IQN (expected "
     "iqn.yyyy-mm.reversed.domain[:anything], e.g. iqn.2026-11.org.example:disk0)")),
    ("iqn.26-11.org.example", ("'iqn.26-11.org.example' is not an IQN (expected "
     "iqn.yyyy-mm.reversed.domain[:anything], e.g. iqn.2026-11.org.example:disk0)")),
    ("iqn.2026-11:disk0", ("'iqn.2026-11:disk0' is not an IQN (expected "
     "iqn.yyyy-mm.reversed.domain[:anything], e.g. iqn.2026-11.org.example:disk0)")),
    ("iqn.2026-11.org.example:my_disk",
     "'iqn.2026-11.org.example:my_disk' contains '_'; iSCSI names use only a-z 0-9 - . :"),
    ("eui.0123", "'eui.0123' is not an EUI name (expected eui. and 16 hex digits)"),
    ("naa.0123456789abcdef01",
     "'naa.0123456789abcdef01' is not an NAA name (expected naa. and 16 or 32 hex digits)"),
    ("disk0", "'disk0' is not an iSCSI name (it must start with iqn., eui. or naa.)"),
    ("iqn.2026-11.org.example:" + "a" * 200,
     f"'iqn.2026-11.org.example:{'a' * 200}' is longer than 223 bytes"),
])
def test_bad_iscsi_names(name: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        check_iscsi_name(name)
    assert str(info.value) == problem


# -- one line per mistake: FILE: key.path: what is wrong ----------------------------------------


@pytest.mark.parametrize(("old", "new", "message"), [
    # values
    ("size: 40GiB", "size: 40Gx", ("targets[0].luns.1.size: '40Gx' is not a size "
     "(use bytes, or e.g. 100MiB, 40GiB, 1T)")),
    ("size: 40GiB", "size: 1000", ("targets[0].luns.1.size: 1000 is not a multiple of the "
     "block size (512)")),
    ("block_size: 4096", "block_size: 4000", ("targets[0].luns.2.block_size: 4000 is not a "
     "block size (one of: 512, 1024, 2048, 4096)")),
    ("read_only: true", "read_only: maybe", ("targets[0].luns.2.read_only: expected true or "
     "false, got 'maybe'")),
    ('"[::]:3260"', '"[::]:99999"', ("portals[1]: '99999' in '[::]:99999' is not a port "
     "number (0..65535)")),
    ('"[::]:3260"', '"0.0.0.0"', "portals[1]: '0.0.0.0:3260' is listed twice (portals[0])"),
    ('"[::]:3260"', '"127.0.0.1:3260"', ("portals[1]: '127.0.0.1:3260' overlaps "
     "0.0.0.0:3260 (portals[0])")),
    ("iqn: eui.0123456789abcdef", "iqn: iqn.2026-11.org.example:disk0",
     "targets[1].iqn: 'iqn.2026-11.org.example:disk0' is already used by targets[0]"),
    ("iqn: eui.0123456789abcdef", "iqn: EUI.0123456789ABCDEF", ("targets[1].iqn: "
     "'EUI.0123456789ABCDEF' must be lower-case: write 'eui.0123456789abcdef'")),
    ("      0: {backend", "      16384: {backend", ("targets[1].luns.16384: LUN 16384 is not a "
     "whole number from 0 to 16383")),
    ("      0: {backend", "      lun0: {backend", ("targets[1].luns.lun0: LUN 'lun0' is not a "
     "whole number from 0 to 16383")),
    ("path: scratch.img", "path: disks/disk0.img", ("targets[1].luns.0.path: "
     "'TMP/disks/disk0.img' is already used by targets[0].luns.1")),
    # backends
    ("backend: file, path: scratch.img", "backend: zvol, path: tank/vol",
     "targets[1].luns.0.path: does not apply to backend 'zvol' (only to file, block)"),
    ("backend: file, path: scratch.img", "backend: zvol",
     ("targets[1].luns.0.dataset: required but missing (backend 'zvol' needs the volume's "
      "dataset, e.g. tank/vm1)")),
    ("backend: file, path: scratch.img", "backend: zvol, dataset: -rf",
     "targets[1].luns.0.dataset: '-rf' is not a ZFS volume (expected pool/volume)"),
    ("backend: file, path: scratch.img", "backend: lvm, vg: vg0",
     "targets[1].luns.0.lv: required but missing (backend 'lvm' needs vg and lv)"),
    ("backend: file, path: scratch.img", "backend: file, path: x, thinpool: pool",
     "targets[1].luns.0.thinpool: does not apply to backend 'file' (only to lvm)"),
    ("backend: file, path: scratch.img", "backend: zvol, dataset: tank/v, volblocksize: 3K",
     "targets[1].luns.0.volblocksize: '3K' is not a power of two from 512 to 1MiB"),
    ("backend: file, path: scratch.img", "backend: block, path: x, direct: 1",
     "targets[1].luns.0.direct: expected true or false, got 1"),
    ("backend: file, path: scratch.img", "backend: nfs, path: x",
     "targets[1].luns.0.backend: unknown backend 'nfs' (supported: file, block, zvol, lvm)"),
    ("{backend: file, path: scratch.img, size: 100MiB}", "{backend: file, size: 100MiB}",
     "targets[1].luns.0.path: required but missing (backend 'file' needs a path)"),
    # auth
    ("    auth: none\n", "", ("targets[1].auth: required but missing: give chap: {user: ..., "
     "secret: ...}, or write `auth: none` to allow anonymous logins")),
    ("    auth: none\n", "    auth: None\n", ("targets[1].auth: expected `none` or a mapping "
     "with chap (and mutual_chap), got 'None'")),
    ("    auth: none\n", "    auth: {}\n", ("targets[1].auth: is empty: give chap: {user: ..., "
     "secret: ...}, or write `auth: none` to allow anonymous logins")),
    ("      chap: {user: alice, secret: a-long-secret}\n", "", ("targets[0].auth.mutual_chap: "
     "needs chap too: mutual CHAP is chap plus the target proving itself back")),
    ("secret: another-secret", "secret: a-long-secret",
     "targets[0].auth.mutual_chap.secret: must differ from chap.secret"),
    ("{user: alice, secret: a-long-secret}", "{user: alice}",
     "targets[0].auth.chap.secret: required but missing"),
    # wrong types
    ('portals: ["0.0.0.0:3260", "[::]:3260"]', 'portals: "0.0.0.0:3260"',
     "portals: expected a list of \"host:port\", got a string"),
    ('portals: ["0.0.0.0:3260", "[::]:3260"]', "portals: []",
     "portals: is empty: listen on at least one portal"),
    ("state_dir: state", "state_dir: [a, b]", ("state_dir: expected a string, got a list "
     "(put it in quotes)")),
    ("    luns:\n      0: {backend: file, path: scratch.img, size: 100MiB}\n",
     "    luns: {}\n", "targets[1].luns: is empty: a target needs at least one LUN"),
    ("    alias: disk0", "    alias: 7", ("targets[0].alias: expected a string, got a number "
     "(put it in quotes)")),
    ("  - iqn: eui.0123456789abcdef", "  - eui.0123456789abcdef\n  - iqn: eui.0123456789abcdef",
     "targets[1]: expected a mapping, got a string"),
    # missing and unknown keys
    ("state_dir: state\n", "", "state_dir: required but missing"),
    ("    alias: disk0", "    alais: disk0", ("targets[0].alais: unknown key (did you mean "
     "'alias'?)")),
    ("size: 100MiB}", "size: 100MiB, thin: yes}", ("targets[1].luns.0.thin: unknown key "
     "(did you mean 'thinpool'?)")),
    ("state_dir: state", "state_dir: state\nlisten: 1.2.3.4", ("listen: unknown key (expected "
     "one of: state_dir, portals, targets, discovery_auth, timeouts, limits, zfs, lvm, "
     "host_groups, "
     "chap_algorithms, login_backoff)")),
])
def test_each_mistake_gives_one_line_naming_the_key(
        tmp_path: Path, old: str, new: str, message: str) -> None:
    assert error_of(tmp_path, edit(old, new)) == message.replace("TMP", str(tmp_path))


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    text = edit("    alias: disk0\n", "    alias: disk0: bad\n")
    assert error_of(tmp_path, text) == "line 5, column 17: mapping values are not allowed here"
    text = edit('"[::]:3260"]', '"[::]:3260"')
    assert error_of(tmp_path, text).startswith("line 3, column 1: ")


def test_duplicate_keys_are_refused_not_silently_overwritten(tmp_path: Path) -> None:
    text = edit("    alias: disk0\n", "    alias: disk0\n    alias: disk1\n")
    assert error_of(tmp_path, text) == "line 6, column 5: duplicate key 'alias'"
    text = edit("      2: {backend", "      1: {backend")
    assert error_of(tmp_path, text) == "line 11, column 7: duplicate key 1"


def test_file_level_problems(tmp_path: Path) -> None:
    assert error_of(tmp_path, "") == "the file is empty (expected state_dir, portals and targets)"
    assert error_of(tmp_path, "- a\n- b\n") == "expected a mapping, got a list"
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read: No such file or directory"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"state_dir: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert str(info.value) == f"{binary}: is not UTF-8 text (byte 11)"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("secret: a-long-secret", "secret: short-pw", ("targets[0].auth.chap.secret: is too short: "
     "CHAP secrets need at least 12 characters (96 bits)")),
    ("secret: a-long-secret", "secret: 123456789012345", ("targets[0].auth.chap.secret: "
     "expected a string, got a value that is not text (put it in quotes)")),
])
def test_secret_problems_never_echo_the_secret(
        tmp_path: Path, old: str, new: str, message: str) -> None:
    got = error_of(tmp_path, edit(old, new))
    assert got == message
    assert new.split(": ")[1] not in got


# -- building the live model ------------------------------------------------------------------


@pytest.fixture
def file_backend() -> None:
    pytest.importorskip("pyscsit.backends.file")
    pytest.importorskip("pyscsit.scsi.lu")


@pytest.mark.usefixtures("file_backend")
def test_build_model_creates_sparse_files_state_and_identities(tmp_path: Path) -> None:
    text = edit("/srv/ro.img", "ro.img")
    cfg = load_config(write(tmp_path, text))
    model = build_model(cfg)
    assert model.portals == [Portal("0.0.0.0", 3260), Portal("::", 3260)]
    assert set(model.targets) == {"iqn.2026-11.org.example:disk0", "eui.0123456789abcdef"}
    disk0 = model.targets["iqn.2026-11.org.example:disk0"]
    assert disk0.alias == "disk0" and disk0.auth.chap == Chap("alice", "a-long-secret")
    assert sorted(disk0.luns) == [1, 2]
    image = tmp_path / "disks/disk0.img"
    assert image.stat().st_size == 40 << 30
    assert image.stat().st_blocks == 0  # sparse: 40 GiB costs nothing
    assert (tmp_path / "state").is_dir()
    assert model.state_dir == str(tmp_path / "state")
    # identities survive a restart and differ between LUs
    again = build_model(load_config(tmp_path / "pyscsit.yaml"))
    ids = [lu.identity for t in model.targets.values() for lu in t.luns.values()]
    ids_again = [lu.identity for t in again.targets.values() for lu in t.luns.values()]
    assert ids == ids_again
    assert len({i.naa for i in ids}) == len(ids)


@pytest.mark.usefixtures("file_backend")
def test_existing_file_without_size_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "scratch.img").write_bytes(b"\0" * 8192)
    text = edit("path: scratch.img, size: 100MiB", "path: scratch.img")
    text = edit("/srv/ro.img", "ro.img", text)
    model = build_model(load_config(write(tmp_path, text)))
    assert (tmp_path / "scratch.img").stat().st_size == 8192
    assert model.targets["eui.0123456789abcdef"].luns[0] is not None


@pytest.mark.usefixtures("file_backend")
def test_backend_failures_name_the_lun(tmp_path: Path) -> None:
    text = edit("path: scratch.img, size: 100MiB", "path: missing.img")
    text = edit("/srv/ro.img", "ro.img", text)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_model(load_config(path))
    assert str(info.value) == (f"{path}: targets[1].luns.0.path: {tmp_path}/missing.img: "
                               "file does not exist; give a size to create it")
    (tmp_path / "file").write_text("")
    text = edit("/srv/ro.img", "file/under-a-file.img")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_model(load_config(path))
    message = str(info.value)
    assert message == (f"{path}: targets[0].luns.2.path: {tmp_path}/file/under-a-file.img: "
                       "cannot create its folder: a file is in the way")
    assert "\n" not in message


@pytest.mark.usefixtures("file_backend")
def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the folder should be")
    text = edit("/srv/ro.img", "ro.img")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_model(load_config(path))
    assert str(info.value) == f"{path}: state_dir: cannot create '{tmp_path}/state': File exists"


# -- the embedded default -------------------------------------------------------------------


def test_default_config_generates_and_keeps_chap_credentials(tmp_path: Path) -> None:
    cfg, chap = default_config(tmp_path / "data")
    assert isinstance(cfg, ServerConfig)
    assert cfg.portals == (Portal("127.0.0.1", 3260),)
    (target,) = cfg.targets
    assert target.iqn == DEFAULT_IQN
    assert target.auth.chap == chap
    assert target.luns == {0: LunConfig("file", str(tmp_path / "data/lun0.img"), 1 << 30)}
    assert len(chap.secret) >= 16 and chap.secret.isalnum()
    creds = tmp_path / "data/credentials.yaml"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert yaml.safe_load(creds.read_text()) == {"user": chap.user, "secret": chap.secret}
    # a restart keeps them; another data dir gets new ones
    assert default_config(tmp_path / "data")[1] == chap
    assert default_config(tmp_path / "other")[1].secret != chap.secret


def test_damaged_default_credentials_are_reported_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "credentials.yaml").write_text("user: x\n")
    with pytest.raises(ConfigError) as info:
        default_config(tmp_path)
    assert str(info.value) == (f"{tmp_path}/credentials.yaml: secret: required but missing "
                               "(delete the file to generate new credentials)")


@pytest.mark.usefixtures("file_backend")
def test_default_config_builds_a_one_gib_sparse_lu(tmp_path: Path) -> None:
    model = build_model(default_config(tmp_path)[0])
    assert list(model.targets) == [DEFAULT_IQN]
    assert list(model.targets[DEFAULT_IQN].luns) == [0]
    assert (tmp_path / "lun0.img").stat().st_size == 1 << 30


def test_timeouts_reach_the_server_options(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + "timeouts: {login: 2, nop_interval: 0.5, "
                            "nop_timeout: 1.5}\n"))
    assert cfg.timeouts == Timeouts(login=2.0, nop_interval=0.5, nop_timeout=1.5)
    options = server_options(cfg)
    assert (options.login_timeout, options.nop_interval, options.nop_timeout) == (2.0, 0.5, 1.5)


def test_timeouts_are_optional_and_default_to_the_servers(tmp_path: Path) -> None:
    from pyscsit.server import ServerOptions

    cfg = load_config(write(tmp_path, GOOD))
    assert server_options(cfg) == ServerOptions()
    partial = load_config(write(tmp_path, GOOD + "timeouts: {nop_interval: 5}\n"))
    assert server_options(partial) == ServerOptions(nop_interval=5.0)


@pytest.mark.parametrize(("text", "message"), [
    ("timeouts: {login: 0}",
     "timeouts.login: 0 is not a number of seconds (more than 0, at most 86400)"),
    ("timeouts: {nop_timeout: soon}",
     "timeouts.nop_timeout: 'soon' is not a number of seconds (more than 0, at most 86400)"),
    ("timeouts: {nop_interval: true}",
     "timeouts.nop_interval: True is not a number of seconds (more than 0, at most 86400)"),
    ("timeouts: {logn: 3}", "timeouts.logn: unknown key (did you mean 'login'?)"),
    ("timeouts: 30", "timeouts: expected a mapping, got a number"),
])
def test_bad_timeouts_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, GOOD + text + "\n") == message


def test_limits_reach_the_server_options(tmp_path: Path) -> None:
    from pyscsit.limits import Limits

    cfg = load_config(write(tmp_path, GOOD + "limits: {max_connections: 100, "
                            "max_connections_per_address: 8, max_pending_logins: 4, "
                            "max_sessions_per_initiator: 2, r2t_timeout: 2.5, "
                            "max_buffered_bytes: 32MiB, max_text_bytes: 16KiB}\n"))
    want = Limits(max_connections=100, max_connections_per_address=8, max_pending_logins=4,
                  max_sessions_per_initiator=2, r2t_timeout=2.5, max_buffered_bytes=32 << 20,
                  max_text_bytes=16 << 10)
    assert cfg.limits == want and server_options(cfg).limits == want
    assert server_options(load_config(write(tmp_path, GOOD))).limits == Limits()
    partial = load_config(write(tmp_path, GOOD + "limits: {r2t_timeout: 5}\n"))
    assert partial.limits == Limits(r2t_timeout=5.0)


@pytest.mark.parametrize(("text", "message"), [
    ("limits: {max_connections: 0}",
     "limits.max_connections: 0 is not a count (1 to 1000000)"),
    ("limits: {max_pending_logins: many}",
     "limits.max_pending_logins: 'many' is not a count (1 to 1000000)"),
    ("limits: {max_sessions_per_initiator: true}",
     "limits.max_sessions_per_initiator: True is not a count (1 to 1000000)"),
    ("limits: {r2t_timeout: -1}",
     "limits.r2t_timeout: -1 is not a number of seconds (more than 0, at most 86400)"),
    ("limits: {max_buffered_bytes: 64KiB}",
     "limits.max_buffered_bytes: '64KiB' is out of range (1MiB to 1TiB)"),
    ("limits: {max_text_bytes: 10MB}",
     "limits.max_text_bytes: '10MB' is not a size (sizes are powers of 1024: write GiB or G)"),
    ("limits: {max_conections: 3}",
     "limits.max_conections: unknown key (did you mean 'max_connections'?)"),
])
def test_bad_limits_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, GOOD + text + "\n") == message


# -- access control and login policy (issue 5) ---------------------------------------------------

ACL = """\
state_dir: state
portals: ["127.0.0.1:3260", "127.0.0.2:3260"]
host_groups:
  esx: [iqn.1998-01.com.vmware:esx1, iqn.1998-01.com.vmware:esx2]
chap_algorithms: [SHA-256, SHA3-256]
login_backoff: {base: 0.5, max: 4}
discovery_auth: {chap: {user: d, secret: a-long-secret}}
targets:
  - iqn: iqn.2026-11.org.example:shared
    auth: {chap: {user: esx, secret: a-long-secret}}
    initiators: [esx, iqn.2008-11.org.linux-kvm:kvm1]
    acls:
      iqn.1998-01.com.vmware:esx1:
        chap: {user: esx1, secret: esx1-own-secret}
        mutual_chap: {user: tgt, secret: target-own-secret}
    portals: ["127.0.0.2:3260"]
    digests: required
    luns:
      0: {backend: file, path: shared0.img, size: 1GiB}
      1: {backend: file, path: boot1.img, size: 1GiB, views: [iqn.1998-01.com.vmware:esx1]}
      2: {backend: file, path: esx.img, size: 1GiB, views: [esx]}
  - iqn: iqn.2026-11.org.example:open
    auth: none
    digests: {header: required}
    luns:
      0: {backend: file, path: open.img, size: 1GiB}
"""
ESX1, ESX2 = "iqn.1998-01.com.vmware:esx1", "iqn.1998-01.com.vmware:esx2"
KVM1 = "iqn.2008-11.org.linux-kvm:kvm1"


def test_access_control_loads_with_host_groups_expanded(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ACL))
    shared, open_ = cfg.targets
    a = shared.access
    assert a.initiators == {ESX1, ESX2, KVM1}
    assert a.views == {1: {ESX1}, 2: {ESX1, ESX2}}
    assert a.portals == (1,)
    assert (a.header_digest, a.data_digest) == (True, True)
    esx1 = a.acls[ESX1]
    assert esx1.chap == Chap("esx1", "esx1-own-secret")
    assert esx1.mutual_chap == Chap("tgt", "target-own-secret")
    assert open_.access.initiators is None and open_.access.portals is None
    assert (open_.access.header_digest, open_.access.data_digest) == (True, False)
    p = cfg.login_policy
    assert p.chap_algorithms == (7, 8)
    assert (p.backoff_base, p.backoff_max) == (0.5, 4.0)
    # the LUNs themselves are the same as without views
    assert shared.luns[1] == LunConfig("file", str(tmp_path / "boot1.img"), 1 << 30)


@pytest.mark.usefixtures("file_backend")
def test_access_control_reaches_the_model(tmp_path: Path) -> None:
    model = build_model(load_config(write(tmp_path, ACL)))
    t = model.targets["iqn.2026-11.org.example:shared"]
    assert sorted(t.luns_for(ESX1)) == [0, 1, 2]
    assert sorted(t.luns_for(ESX2)) == [0, 2]
    assert sorted(t.luns_for(KVM1)) == [0]
    assert not t.allows("iqn.2008-11.org.linux-kvm:intruder")
    chap = t.auth_for(ESX1).chap
    assert chap is not None and chap.user == "esx1"
    assert t.on_portal(model.portals, ("127.0.0.2", 3260))
    assert not t.on_portal(model.portals, ("127.0.0.1", 3260))
    assert t.require_header_digest and t.require_data_digest
    assert model.chap_algorithms == (7, 8)
    assert (model.guard.base_delay, model.guard.max_delay) == (0.5, 4.0)


def test_without_access_keys_everyone_who_authenticates_sees_everything(
        tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    for t in cfg.targets:
        assert t.access.initiators is None and not t.access.views and not t.access.acls
    assert cfg.login_policy.chap_algorithms == ()


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  esx: [", "  iqn.x: [", ("host_groups.iqn.x: 'iqn.x' is not a group name (letters, "
     "digits, _ . -; not an iSCSI name)")),
    ("  esx: [iqn.1998-01.com.vmware:esx1, iqn.1998-01.com.vmware:esx2]", "  esx: []",
     "host_groups.esx: expected a non-empty list of initiator names"),
    ("com.vmware:esx2]\nchap", "com.vmware:ESX2]\nchap", ("host_groups.esx[1]: "
     "'iqn.1998-01.com.vmware:ESX2' must be lower-case: write 'iqn.1998-01.com.vmware:esx2'")),
    ("initiators: [esx,", "initiators: [vmware,", ("targets[0].initiators[0]: 'vmware' is "
     "neither a host group (host_groups: esx) nor an iSCSI name")),
    ("initiators: [esx, iqn.2008-11.org.linux-kvm:kvm1]", "initiators: []",
     ("targets[0].initiators: is empty: no initiator could log in (remove the key to allow "
     "anyone who authenticates)")),
    ("views: [iqn.1998-01.com.vmware:esx1]", "views: [iqn.1998-01.com.vmware:esx9]",
     ("targets[0].luns.1.views: names no initiator of this target's initiators, so no one "
     "could see the LU")),
    ("views: [esx]", "views: esx", ("targets[0].luns.2.views: expected a list of host groups "
     "or initiator names, got a string")),
    ("      iqn.1998-01.com.vmware:esx1:\n", "      iqn.1998-01.com.vmware:esx7:\n",
     ("targets[0].acls['iqn.1998-01.com.vmware:esx7']: is not in this target's initiators, "
     "so it could never log in")),
    ("        chap: {user: esx1, secret: esx1-own-secret}\n", "",
     ("targets[0].acls['iqn.1998-01.com.vmware:esx1']: expected chap: {user: ..., secret: ...}"
     " (and mutual_chap), or `none` to let this initiator in without CHAP")),
    ('portals: ["127.0.0.2:3260"]', 'portals: ["127.0.0.3:3260"]', ("targets[0].portals[0]: "
     "'127.0.0.3:3260' is not one of the server's portals (127.0.0.1:3260, 127.0.0.2:3260)")),
    ('portals: ["127.0.0.2:3260"]', "portals: []", ("targets[0].portals: is empty: list some "
     "of the server's portals, or remove the key")),
    ("digests: required", "digests: yes", ("targets[0].digests: expected required, optional "
     "or {header: ..., data: ...}, got true/false")),
    ("digests: required", "digests: always", ("targets[0].digests: 'always' is not one of: "
     "required, optional (or a mapping {header: ..., data: ...})")),
    ("digests: {header: required}", "digests: {headers: required}",
     "targets[1].digests.headers: unknown key (did you mean 'header'?)"),
    ("[SHA-256, SHA3-256]", "[SHA256]", ("chap_algorithms[0]: 'SHA256' is not one of: MD5, "
     "SHA-1, SHA-256, SHA3-256")),
    ("[SHA-256, SHA3-256]", "[]", ("chap_algorithms: expected a non-empty list of: MD5, SHA-1,"
     " SHA-256, SHA3-256")),
    ("{base: 0.5, max: 4}", "{base: 5, max: 4}", "login_backoff.max: 4 is less than base (5)"),
    ("{base: 0.5, max: 4}", "{base: -1}", ("login_backoff.base: -1 is not a number of seconds "
     "(0 to 3600; base 0 turns the back-off off)")),
    ("    initiators:", "    initators:", ("targets[0].initators: unknown key (did you mean "
     "'initiators'?)")),
])
def test_access_control_mistakes_give_one_line_naming_the_key(
        tmp_path: Path, old: str, new: str, message: str) -> None:
    assert error_of(tmp_path, edit(old, new, ACL)) == message


def test_per_initiator_secret_problems_never_echo_the_secret(tmp_path: Path) -> None:
    text = edit("secret: esx1-own-secret", "secret: short1", ACL)
    message = error_of(tmp_path, text)
    assert message == ("targets[0].acls['iqn.1998-01.com.vmware:esx1'].chap.secret: is too "
                       "short: CHAP secrets need at least 12 characters (96 bits)")
    text = edit("secret: target-own-secret", "secret: esx1-own-secret", ACL)
    message = error_of(tmp_path, text)
    assert "esx1-own-secret" not in message and "must differ" in message


def test_a_target_cannot_be_bound_to_a_portal_given_by_host_name(tmp_path: Path) -> None:
    text = edit('portals: ["127.0.0.1:3260", "127.0.0.2:3260"]',
                'portals: ["127.0.0.1:3260", "localhost:3261"]', ACL)
    text = edit('portals: ["127.0.0.2:3260"]', 'portals: ["localhost:3261"]', text)
    assert error_of(tmp_path, text) == ("targets[0].portals[0]: 'localhost:3261' is a host "
                                        "name: bind targets to portals given as IP addresses")
