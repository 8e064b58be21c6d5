"""Medians, per-pair ratios, and the three outputs: JSON, a markdown table, a PNG chart."""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.clients import Case, RunResult
from benchmarks.profile import Profile

A, B = "pyscsit", "tgtd"


@dataclass(slots=True)
class Side:
    runs: int = 0
    failed: int = 0
    iops: float = 0.0
    mb_s: float = 0.0
    cpu_s_per_gb: float = 0.0
    rss_peak_mib: float = 0.0


@dataclass(slots=True)
class Summary:
    key: str
    label: str
    sides: dict[str, Side] = field(default_factory=dict)
    ratios: list[float] = field(default_factory=list)  # pyscsit/tgtd throughput, per pair

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def summarize(cases: list[Case], results: list[RunResult]) -> list[Summary]:
    out = []
    for case in cases:
        mine = [r for r in results if r.case == case.key]
        if not mine:
            continue
        s = Summary(case.key, case.label)
        for name in (A, B):
            ok = [r for r in mine if r.server == name and r.ok]
            s.sides[name] = Side(
                runs=len(ok), failed=sum(1 for r in mine if r.server == name and not r.ok),
                iops=_med([r.iops for r in ok]), mb_s=_med([r.mb_s for r in ok]),
                cpu_s_per_gb=_med([r.cpu_s_per_gb for r in ok]),
                rss_peak_mib=max((r.rss_peak_mib for r in ok), default=0.0))
        pairs = sorted({r.pair for r in mine})
        for p in pairs:
            a = [r for r in mine if r.pair == p and r.server == A and r.ok]
            b = [r for r in mine if r.pair == p and r.server == B and r.ok]
            if a and b and b[0].mb_s > 0:
                s.ratios.append(a[0].mb_s / b[0].mb_s)
        out.append(s)
    return out


def digest_cost(results: list[RunResult], off: str, on: str, server: str = A) -> float | None:
    """Median over pairs of 1 - throughput(digest on) / throughput(digest off), one server."""
    costs = []
    for p in sorted({r.pair for r in results}):
        x = [r for r in results if r.pair == p and r.server == server and r.case == off and r.ok]
        y = [r for r in results if r.pair == p and r.server == server and r.case == on and r.ok]
        if x and y and x[0].mb_s > 0:
            costs.append(1 - y[0].mb_s / x[0].mb_s)
    return statistics.median(costs) if costs else None


CHECKS = [  # issue 6 "done when": (label, case key)
    ("4 KiB random read QD32 (iscsi-perf)", "perf-4k-rand-r-s1"),
    ("1 MiB sequential read QD4 (qemu-img bench)", "bench-1024k-qd4-r"),
    ("1 MiB sequential write QD4 (qemu-img bench)", "bench-1024k-qd4-w"),
]
DIGEST_CHECKS = [
    ("1 MiB read", "bench-1024k-qd4-r", "bench-1024k-qd4-r-hd"),
    ("1 MiB write", "bench-1024k-qd4-w", "bench-1024k-qd4-w-hd"),
]


def _fmt_tp(side: Side, key: str) -> str:
    if not side.runs:
        return "failed"
    if key.startswith("convert") or "1024k" in key or "128k" in key:
        return f"{side.mb_s:,.0f} MB/s"
    return f"{side.iops / 1000:,.1f}K IOPS ({side.mb_s:,.0f} MB/s)"


def _fmt_ratio(s: Summary) -> str:
    if s.ratio is None:
        return "-"
    return f"**{s.ratio:.2f}** ({min(s.ratios):.2f}-{max(s.ratios):.2f})"


def markdown(meta: dict[str, Any], summaries: list[Summary], results: list[RunResult],
             commands: dict[str, dict[str, str]], server_cmds: dict[str, list[str]],
             prof: Profile | None) -> str:
    by_key = {s.key: s for s in summaries}
    L = [f"# pyscsit vs tgtd: {meta['date']} on {meta['host']}", "",
         (f"`{meta['command']}`: {meta['pairs']} alternated pairs (pyscsit, tgtd, then tgtd, "
         f"pyscsit, ...), {meta['duration_s'] / 60:.1f} min. pyscsit {meta['git']} "
         f"(pyscsit/ + backends/ sha256 {meta.get('source_sha256', '?')}); "
         f"{meta['tgtd']}; {meta['qemu_img']}; libiscsi {meta['libiscsi']}; "
         f"{meta['cpus']} vCPUs, kernel {meta['kernel']}, Python {meta['python']}. "
         "Loopback TCP, each target serving its own pre-written 1 GiB file from the page "
         "cache (ext4). Medians; the ratio is the median of the per-pair ratios "
         "pyscsit/tgtd (range in brackets). Server CPU is utime+stime of the whole server "
         "process per 10^9 bytes moved; RSS is the peak VmRSS sampled every 50 ms. "
         f"Servers and clients ran at nice {meta.get('nice', 0)}."), "",
         "![pyscsit vs tgtd](latest.png)", "", "## Issue 6 targets", "",
         "| workload | pyscsit | tgtd | pyscsit/tgtd | target | met |", "|---|---|---|---|---|---|"]
    for label, key in CHECKS:
        s = by_key.get(key)
        if s is None:
            continue
        met = "yes" if s.ratio is not None and s.ratio >= 1.0 else "no"
        L.append(f"| {label} | {_fmt_tp(s.sides[A], key)} | {_fmt_tp(s.sides[B], key)} | "
                 f"{_fmt_ratio(s)} | >= 1.0 | {met} |")
    for label, off, on in DIGEST_CHECKS:
        c, t = digest_cost(results, off, on), digest_cost(results, off, on, B)
        if c is None:
            continue
        met = "yes" if c < 0.10 else "no"
        tgt = f"{100 * t:+.1f} %" if t is not None else "-"
        L.append(f"| header digest cost, {label} (1 - on/off) | {100 * c:+.1f} % | {tgt} | "
                 f"| < 10 % (pyscsit) | {met} |")
    L += ["", "## Every case", "",
          ("| case | pyscsit | tgtd | pyscsit/tgtd | CPU s/GB pyscsit / tgtd "
          "| peak RSS MiB pyscsit / tgtd |"), "|---|---|---|---|---|---|"]
    for s in summaries:
        a, b = s.sides[A], s.sides[B]
        fails = "" if not (a.failed or b.failed) else f" ({a.failed}/{b.failed} runs failed)"
        L.append(f"| {s.label}{fails} | {_fmt_tp(a, s.key)} | {_fmt_tp(b, s.key)} | "
                 f"{_fmt_ratio(s)} | {a.cpu_s_per_gb:.2f} / {b.cpu_s_per_gb:.2f} | "
                 f"{a.rss_peak_mib:.0f} / {b.rss_peak_mib:.0f} |")
    other = [r.other_cpus for r in results]
    steal = [r.steal_cpus for r in results]
    L += ["", (f"Other work on the machine while a run went on (neither server nor client): "
          f"median {_med(other):.2f} vCPUs busy, max {max(other, default=0):.2f}; hypervisor "
          f"steal median {_med(steal):.2f} vCPUs. This is a shared {meta['cpus']}-vCPU guest: "
          "expect ±20 % run to run; the alternation and per-pair ratios are there for that.")]
    if prof is not None:
        L += ["", "## Profile: pyscsit under 4 KiB random reads at QD32", ""]
        if prof.error:
            L.append(f"py-spy failed: {prof.error}")
        else:
            ld = prof.load
            rate = f"{ld.iops / 1000:.1f}K IOPS while sampled" if ld and ld.ok else ""
            L += [(f"Flamegraph: [{prof.svg}]({prof.svg}); collapsed stacks: "
                  f"[{prof.raw}]({prof.raw}). {prof.samples} samples at {prof.rate} Hz over "
                  f"{prof.seconds} s of the event-loop thread and busy pool threads ({rate}; "
                  "idle pool threads left out). Self: the innermost Python frame, so a C call "
                  "(a system call, the CRC) counts for the line that made it."), "",
                  "| # | function (file:first line) | self % | total % |", "|---|---|---|---|"]
            for i, h in enumerate(prof.top, 1):
                L.append(f"| {i} | `{h.function}` | {h.self_pct:.1f} | {h.total_pct:.1f} |")
            if prof.native_top:
                L += ["", (f"With C frames (`--native`, [{prof.native_raw}]({prof.native_raw})): "
                      "where the time under those Python lines goes."), "",
                      "| # | frame | self % |", "|---|---|---|"]
                for i, h in enumerate(prof.native_top, 1):
                    L.append(f"| {i} | `{h.function}` | {h.self_pct:.1f} |")
            L += ["", "Commands: " + "; ".join(f"`{c}`" for c in prof.commands)]
    L += ["", "## Commands", "", "Servers:", ""]
    for name, cmds in server_cmds.items():
        L += [f"- {name}: " + "; ".join(f"`{c}`" for c in dict.fromkeys(cmds))]
    L += ["", ("Clients (pyscsit's portal shown; tgtd's run is the same with its portal, "
          "IQN and LUN 1):"), ""]
    for s in summaries:
        L.append(f"- {s.label}: `{commands[s.key][A]}`")
    return "\n".join(L) + "\n"


def chart(path: Path, meta: dict[str, Any], summaries: list[Summary]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter

    rows = [s for s in summaries if s.ratio is not None][::-1]
    n = len(rows)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 0.42 * n + 1.9), sharey=True,
                                  gridspec_kw={"width_ratios": [3, 1.4]})
    y = list(range(n))
    ratios = [s.ratio or 0 for s in rows]
    colors = ["#2e7d32" if r >= 1.0 else "#c62828" for r in ratios]
    err = [[r - min(s.ratios) for r, s in zip(ratios, rows)],
           [max(s.ratios) - r for r, s in zip(ratios, rows)]]
    ax.barh(y, ratios, color=colors, height=0.65, xerr=err,
            error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#424242"})
    ax.set_xscale("log", base=2)
    ax.axvline(1.0, color="black", lw=1)
    lo, hi = min(ratios + [0.5]) / 1.6, max(ratios + [2.0]) * 3.2
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.set_yticks(y, [s.label for s in rows])
    for yi, s in zip(y, rows):
        a, b = s.sides[A], s.sides[B]
        if "IOPS" in _fmt_tp(a, s.key):
            txt = f"{s.ratio:.2f}  ({a.iops / 1000:.1f}K vs {b.iops / 1000:.1f}K IOPS)"
        else:
            txt = f"{s.ratio:.2f}  ({a.mb_s:,.0f} vs {b.mb_s:,.0f} MB/s)"
        ax.text(max(s.ratios) * 1.06, yi, txt, va="center", fontsize=8.5)
    ax.set_xlabel("throughput pyscsit / tgtd: median of per-pair ratios, whiskers min-max "
                  "(right of 1x = pyscsit faster)")
    ax.grid(axis="x", alpha=0.3)
    h = 0.36
    ax2.barh([v + h / 2 for v in y], [s.sides[A].cpu_s_per_gb for s in rows], h,
             label="pyscsit", color="#1565c0")
    ax2.barh([v - h / 2 for v in y], [s.sides[B].cpu_s_per_gb for s in rows], h,
             label="tgtd", color="#9e9e9e")
    ax2.set_xscale("log")
    ax2.set_xlabel("server CPU seconds per GB (lower is better)")
    ax2.legend(loc="lower right", fontsize=8)
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle(f"pyscsit vs tgtd over loopback, medians of {meta['pairs']} alternated pairs "
                 f"({meta['date']}, {meta['host']}, {meta['cpus']} vCPUs)   +HD = header "
                 "digest CRC32C", fontsize=10.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_json(path: Path) -> tuple[dict[str, Any], list[RunResult], dict[str, dict[str, str]],
                                   dict[str, list[str]], Profile | None]:
    """The inputs of markdown() and chart() back from a results file (``--render``)."""
    from benchmarks.profile import Hot

    doc = json.loads(path.read_text())
    results = [RunResult(**r) for r in doc["runs"]]
    commands = {s["case"]: s["commands"] for s in doc["summary"]}
    prof = None
    if doc.get("profile"):
        p = dict(doc["profile"])
        p["top"] = [Hot(**h) for h in p["top"]]
        p["native_top"] = [Hot(**h) for h in p.get("native_top", [])]
        p["load"] = RunResult(**p["load"]) if p.get("load") else None
        prof = Profile(**p)
    return doc["meta"], results, commands, doc["servers"], prof


_REPO = str(Path(__file__).resolve().parents[1]) + "/"
_WORKDIR = re.compile(r"(/var)?/tmp/pyscsit-bench-[A-Za-z0-9_]+")


def public(text: str) -> str:
    """Results are committed: no paths of the machine that made them. The interpreter becomes
    ``python3``, the checkout ``./``-relative, the scratch folder ``$WORKDIR``."""
    text = text.replace(sys.executable, "python3").replace(_REPO, "")
    return _WORKDIR.sub("$WORKDIR", text)


def scrub_files(folder: Path) -> None:
    for path in folder.iterdir():
        if path.suffix in (".json", ".md", ".svg", ".txt") and path.is_file():
            text = path.read_text(errors="surrogateescape")
            clean = public(text)
            if clean != text:
                path.write_text(clean, errors="surrogateescape")


def write_json(path: Path, meta: dict[str, Any], summaries: list[Summary],
               results: list[RunResult], commands: dict[str, dict[str, str]],
               server_cmds: dict[str, list[str]], prof: Profile | None) -> None:
    doc = {
        "meta": meta,
        "servers": {k: list(dict.fromkeys(v)) for k, v in server_cmds.items()},
        "summary": [{"case": s.key, "label": s.label, "ratio_median": s.ratio,
                     "ratios": s.ratios, **{k: asdict(v) for k, v in s.sides.items()},
                     "commands": commands[s.key]} for s in summaries],
        "digest_cost": {label: {"pyscsit": digest_cost(results, off, on),
                                "tgtd": digest_cost(results, off, on, B)}
                        for label, off, on in DIGEST_CHECKS},
        "runs": [asdict(r) for r in results],
        "profile": asdict(prof) if prof is not None else None,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
