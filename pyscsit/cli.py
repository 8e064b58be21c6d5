"""The `pyscsit` command.

    pyscsit serve [--config FILE] [--log-level LEVEL]
    pyscsit lun create|snapshot|clone|resize|delete --config FILE ...   (lun_cli.py)
    pyscsit --version

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a usage or config error (one line on
stderr, never a traceback), 1 when the server cannot start (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pyscsit import __version__
from pyscsit.config import (
    ConfigError,
    ServerConfig,
    build_model,
    default_config,
    load_config,
    server_options,
)
from pyscsit.target import Chap, Model, Portal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2  # argparse uses 2 for usage errors too

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: called by the server with the addresses it listens on
Ready = Callable[[list[tuple[str, int]]], None]

log = logging.getLogger("pyscsit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyscsit", description="A userspace iSCSI target server.")
    parser.add_argument("--version", action="version", version=f"pyscsit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the target in the foreground",
        description="Run the target in the foreground until SIGTERM or SIGINT. Without "
        "--config: one 1 GiB sparse LU in ./pyscsit-data on 127.0.0.1:3260 with generated "
        "CHAP credentials, and the commands to connect to it.")
    serve.add_argument("--config", metavar="FILE", help="YAML config file (see README.md)")
    serve.add_argument("--log-level", metavar="LEVEL", default="info",
                       type=str.lower, choices=LOG_LEVELS,
                       help=f"one of {', '.join(LOG_LEVELS)} (default: info)")
    from pyscsit import lun_cli

    lun_cli.add_parser(commands)
    return parser


def connect_lines(portal: Portal, iqn: str, lun: int, chap: Chap | None) -> list[str]:
    """Shell commands that reach ``iqn``/``lun`` at ``portal`` from open-iscsi and QEMU."""
    node = f"iscsiadm -m node -T {iqn} -p {portal}"
    lines = [f"iscsiadm -m discovery -t sendtargets -p {portal}"]
    if chap is not None:
        lines += [
            f"{node} -o update -n node.session.auth.authmethod -v CHAP",
            f"{node} -o update -n node.session.auth.username -v {chap.user}",
            f"{node} -o update -n node.session.auth.password -v {chap.secret}",
        ]
    lines.append(f"{node} --login")
    creds = f"{chap.user}%{chap.secret}@" if chap is not None else ""
    opts = (f"driver=iscsi,transport=tcp,portal={portal},target={iqn},lun={lun}"
            + (f",user={chap.user},password={chap.secret}" if chap is not None else ""))
    lines += [
        f'qemu-img info "iscsi://{creds}{portal}/{iqn}/{lun}"',
        f'qemu-img info --image-opts "{opts},header-digest=crc32c"',
    ]
    return lines


def _default_banner(model: Model, chap: Chap) -> Ready:
    """What to print once the embedded default is listening: how to connect to it."""
    iqn, target = next(iter(model.targets.items()))
    lun = min(target.luns)

    def ready(addresses: list[tuple[str, int]]) -> None:
        portal = Portal(*addresses[0]) if addresses else model.portals[0]
        print(f"pyscsit: no --config, serving the default: {iqn} LUN {lun}, a 1 GiB sparse "
              f"file in {model.state_dir}, on {portal}, CHAP user {chap.user}", flush=True)
        print("Connect with:", *(f"  {line}" for line in connect_lines(portal, iqn, lun, chap)),
              sep="\n", flush=True)

    return ready


def _serve_forever(model: Model, ready: Ready | None, cfg: ServerConfig,
                   config_path: str | None = None) -> None:
    # Imported here: `--version` and config errors must not need the protocol layers.
    from pyscsit import server
    from pyscsit.reload import live_config

    # With a config file: pid file + SIGHUP reload, which `pyscsit lun ...` uses (reload.py).
    attach = live_config(cfg, config_path) if config_path is not None else None
    server.run(model, ready=ready, options=server_options(cfg), attach=attach)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format=LOG_FORMAT)
    chap: Chap | None = None
    try:
        if args.config is not None:
            cfg = load_config(args.config)
        else:
            cfg, chap = default_config()
        model = build_model(cfg)
    except ConfigError as e:
        print(f"pyscsit: {e}", file=sys.stderr)
        return EXIT_CONFIG
    ready = _default_banner(model, chap) if chap is not None else None
    try:
        _serve_forever(model, ready, cfg, config_path=args.config)
    except OSError as e:  # e.g. EADDRINUSE / EACCES when binding a portal
        print(f"pyscsit: cannot serve: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("pyscsit: a command is required (try: pyscsit serve)", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "lun":
        from pyscsit import lun_cli

        return lun_cli.main(args)
    try:
        return _serve(args)
    except KeyboardInterrupt:  # Ctrl-C before the server installed its own handler
        return 130
