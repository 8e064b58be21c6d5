"""pyscsit against tgtd on this machine, side by side, in one command.

    python -m benchmarks.run [--quick] [--pairs N] [--nice N] [--cases K,...] [--no-profile]
                             [--workdir DIR] [--out DIR] [--max-minutes M]
    python -m benchmarks.run --render benchmarks/results/<date>-<host>.json

Starts both targets on 127.0.0.1 (free ports) over their own pre-written 1 GiB file, runs every
case against both, alternating which goes first in each pair, then profiles pyscsit under 4 KiB
random reads. Writes ``<date>-<host>.json``, ``latest.md`` and ``latest.png`` under
benchmarks/results/ (``--quick`` writes under benchmarks/results/quick/ instead, so a smoke run
never replaces the committed numbers). Stops both servers whatever happens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.clients import Case, RunResult, Settings, all_cases, describe, run_case
from benchmarks.profile import Profile, record
from benchmarks.servers import REPO, PyscsitServer, Server, TgtdServer, prepare_lu

RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = ("tgtd", "tgtadm", "iscsi-perf", "qemu-img", "timeout")


def _out(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO,
                           check=False)
        return (p.stdout or p.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def source_digest() -> str:
    """sha256 over pyscsit/ and backends/ as they are on disk now (the tree may be dirty)."""
    import hashlib

    h = hashlib.sha256()
    for folder in ("pyscsit", "backends"):
        for f in sorted((REPO / folder).rglob("*.py")):
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _meta(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    try:
        from pyscsit import digest

        crc = digest.IMPLEMENTATION
    except Exception as e:  # noqa: BLE001 - the benchmark still runs; say why it is missing
        crc = f"? ({e})"
    try:
        import uvloop

        uv = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        uv = "not installed"
    now = dt.datetime.now(dt.UTC)
    return {
        "date": now.strftime("%Y-%m-%d"), "started": now.isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": "python -m benchmarks.run" + ("".join(" " + a for a in argv)),
        "pairs": args.pairs, "quick": args.quick,
        "git": _out(["git", "describe", "--always", "--dirty"]),
        "source_sha256": source_digest(),
        "tgtd": "tgtd " + _out(["tgtd", "-V"]),
        "qemu_img": _out(["qemu-img", "--version"]).splitlines()[0],
        "libiscsi": _out(["dpkg-query", "-W", "-f", "${Version}", "libiscsi7"]),
        "kernel": platform.release(), "python": platform.python_version(),
        "uvloop": uv, "crc32c": crc, "cpus": os.cpu_count(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in
                           Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name")), "?"),
    }


def _negotiated(server: Server, argv: list[str]) -> str:
    env = dict(os.environ, LIBISCSI_DEBUG="10")
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30,
                           check=False)
    except subprocess.SubprocessError:
        return "?"
    m = re.search(r"TargetLoginReply: HeaderDigest=(\w+)", p.stdout + p.stderr)
    return m.group(1) if m else "?"


def check_digests(servers: list[Server]) -> dict[str, dict[str, str]]:
    """Log in once per server and setting with libiscsi's debug log on: what was agreed."""
    seen: dict[str, dict[str, str]] = {}
    for s in servers:
        row = seen.setdefault(s.name, {})
        for on in (False, True):
            s.set_header_digest(on)
            row[f"qemu-img header-digest={'crc32c' if on else 'none'}"] = _negotiated(
                s, ["qemu-img", "info", "--image-opts", s.image_opts(on)])
        s.set_header_digest(False)
        row["iscsi-perf (libiscsi default offer)"] = _negotiated(
            s, ["timeout", "-s", "INT", "1", "iscsi-perf", "-r", "-m", "1", "-b", "8", s.url()])
    want = {"qemu-img header-digest=none": "None", "qemu-img header-digest=crc32c": "CRC32C",
            "iscsi-perf (libiscsi default offer)": "None"}
    for name, row in seen.items():
        for k, v in want.items():
            if row.get(k) != v:
                raise RuntimeError(f"{name}: {k} negotiated HeaderDigest={row.get(k)}, not {v}")
    return seen


def run_pairs(cases: list[Case], servers: list[Server], settings: Settings, pairs: int,
              deadline: float) -> list[RunResult]:
    results: list[RunResult] = []
    total = pairs * len(cases)
    done = 0
    for pair in range(pairs):
        for ci, case in enumerate(cases):
            # alternate who goes first, per case and per pair, so neither always follows
            # the other's writeback or warm-up
            order = servers if (pair + ci) % 2 == 0 else servers[::-1]
            line = []
            for i, srv in enumerate(order):
                r = run_case(case, srv, settings, pair, i)
                results.append(r)
                line.append(f"{srv.name} {r.iops / 1000:7.1f}K IOPS {r.mb_s:7.0f} MB/s"
                            if r.ok else f"{srv.name} FAILED {r.error}")
            done += 1
            print(f"[{done}/{total}] pair {pair + 1} {case.label:32s} " + " | ".join(line),
                  flush=True)
            if time.monotonic() > deadline:
                print("time limit reached: stopping after this case", flush=True)
                return results
    return results


def render(path: Path) -> int:
    meta, results, commands, server_cmds, prof = report.load_json(path)
    keys = {r.case for r in results}
    cases = [c for c in all_cases() if c.key in keys]
    summaries = report.summarize(cases, results)
    out = path.parent
    (out / "latest.md").write_text(
        report.markdown(meta, summaries, results, commands, server_cmds, prof))
    report.scrub_files(out)
    report.chart(out / "latest.png", meta, summaries)
    print(f"wrote {out / 'latest.md'}, {out / 'latest.png'} from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 pair, short runs (about 3 minutes): a smoke test of the harness")
    ap.add_argument("--pairs", type=int, help="alternated pairs (default 5; 1 with --quick)")
    ap.add_argument("--cases", help="comma-separated case keys or prefixes (default: all)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    ap.add_argument("--workdir", help="where the two 1 GiB LU files go (default: a temporary "
                    "folder under /var/tmp, removed afterwards); must not be tmpfs")
    ap.add_argument("--out", help="results folder (default benchmarks/results[/quick])")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for the servers and clients (inherited from this process; "
                    "negative needs root): on a machine shared with other work, e.g. -10 "
                    "keeps it from deciding the result (default 0)")
    ap.add_argument("--max-minutes", type=float, default=30.0,
                    help="stop starting new cases after this long (default 30)")
    ap.add_argument("--render", metavar="JSON",
                    help="only rewrite latest.md and latest.png (beside JSON) from a results file")
    args = ap.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    args.pairs = args.pairs or (1 if args.quick else 5)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install -y tgt libiscsi-bin "
              "qemu-utils qemu-block-extra)", file=sys.stderr)
        return 2
    settings = (Settings(perf_seconds=3, count_scale=0.25) if args.quick
                else Settings(perf_seconds=6, count_scale=1.0))
    cases = all_cases()
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in cases if any(c.key.startswith(w) for w in wanted)]
    out = Path(args.out) if args.out else (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    meta = _meta(args, argv)
    meta["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pyscsit-bench-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = [PyscsitServer(workdir), TgtdServer(workdir)]
    t0 = time.monotonic()
    prof: Profile | None = None
    results: list[RunResult] = []
    try:
        for s in servers:
            print(f"writing and caching {s.lu_path}", flush=True)
            prepare_lu(s.lu_path)
        for s in servers:
            s.start()
            print(f"{s.name} pid {s.pid} on 127.0.0.1:{s.port}", flush=True)
        meta["negotiated_header_digest"] = check_digests(servers)
        results = run_pairs(cases, servers, settings, args.pairs,
                            t0 + args.max_minutes * 60)
        if not args.no_profile:
            print("profiling pyscsit under 4 KiB random reads at QD32", flush=True)
            prof = record(servers[0], out, seconds=5 if args.quick else 10)
            if prof.error:
                print(f"profile: {prof.error}", flush=True)
        meta["server_peak_rss_mib"] = {s.name: s.peak_rss_kib() / 1024 for s in servers}
    finally:
        for s in servers:
            s.stop()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    if not results:
        print("no results", file=sys.stderr)
        return 1
    summaries = report.summarize(cases, results)
    commands = {c.key: {s.name: describe(c, s, settings) for s in servers} for c in cases}
    server_cmds = {s.name: s.commands for s in servers}
    name = f"{meta['date']}-{meta['host']}.json"
    report.write_json(out / name, meta, summaries, results, commands, server_cmds, prof)
    (out / "latest.md").write_text(
        report.markdown(meta, summaries, results, commands, server_cmds, prof))
    report.scrub_files(out)
    report.chart(out / "latest.png", meta, summaries)
    print(f"wrote {out / name}, {out / 'latest.md'}, {out / 'latest.png'} "
          f"in {meta['duration_s'] / 60:.1f} min")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
