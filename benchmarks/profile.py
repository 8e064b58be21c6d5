"""A py-spy profile of pyscsit while iscsi-perf keeps 32 random 4 KiB reads in flight.

Three recordings under the same load: a flamegraph (SVG) for people; py-spy's raw collapsed
stacks aggregated per function, for the table in latest.md; and the same with C frames
(``--native``), which shows the system calls under the Python lines (writev, preadv).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.clients import Case, RunResult, Settings, run_case
from benchmarks.servers import Server


@dataclass(slots=True)
class Hot:
    function: str  # "name (file)"
    self_pct: float  # share of samples where it is the innermost Python frame
    total_pct: float  # share of samples where it is anywhere on the stack


@dataclass(slots=True)
class Profile:
    svg: str
    raw: str
    samples: int
    rate: int
    seconds: int
    top: list[Hot]
    native_raw: str
    native_top: list[Hot]  # with C frames (--native): system calls and extension code
    load: RunResult | None  # the iscsi-perf run the recordings were taken under
    commands: list[str]
    error: str = ""


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "func (path/to/file.py:LINE)"; -F makes LINE the function's first line
    # with --native, C frames are "func (libc.so.6)" or a bare address "0x7f... (libc.so.6)"
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame
    return f"{name} ({where.rstrip(')')})"


def top_functions(raw_text: str, n: int = 15) -> tuple[int, list[Hot]]:
    """Collapsed stacks ("frame;frame;... COUNT" per line) -> busy samples, top ``n`` by self.

    Idle thread-pool workers are left out of both.
    """
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    samples = 0
    for line in raw_text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if (any(f.startswith("_worker (") for f in frames)
                and not any(f.startswith("_WorkItem.run (") for f in frames)):
            continue  # an idle pool thread waiting for work, which py-spy counts as active
        samples += k
        self_c[frames[-1]] += k
        for f in set(frames):
            total_c[f] += k
    top = [Hot(f, 100 * c / samples, 100 * total_c[f] / samples)
           for f, c in self_c.most_common(n)] if samples else []
    return samples, top


def record(server: Server, outdir: Path, seconds: int = 10, rate: int = 250) -> Profile:
    svg = outdir / "profile-4k-read.svg"
    raw = outdir / "profile-4k-read.txt"
    native = outdir / "profile-4k-read-native.txt"
    prof = Profile(svg.name, raw.name, 0, rate, seconds, [], native.name, [], None, [])
    if shutil.which("py-spy") is None:
        prof.error = "py-spy is not installed (pip install py-spy)"
        return prof
    load_case = Case("profile-load", "4 KiB rand read QD32 (under py-spy)", "perf")
    # the load outlasts the recordings: start-up, three recordings and a margin
    settings = Settings(perf_seconds=3 * seconds + 8, count_scale=1.0)
    spies = [
        ["py-spy", "record", "--pid", str(server.pid), "--duration", str(seconds),
         "--rate", str(rate), "--format", "flamegraph", "--output", str(svg)],
        ["py-spy", "record", "--pid", str(server.pid), "--duration", str(seconds),
         "--rate", str(rate), "--function", "--format", "raw", "--output", str(raw)],
        ["py-spy", "record", "--pid", str(server.pid), "--duration", str(seconds),
         "--rate", str(rate // 2), "--native", "--function", "--format", "raw",
         "--output", str(native)],
    ]
    prof.commands = [" ".join(a) for a in spies]
    result: list[RunResult] = []
    loader = threading.Thread(
        target=lambda: result.append(run_case(load_case, server, settings, 0, 0)))
    loader.start()
    try:
        time.sleep(2)  # login and ramp-up
        for argv in spies:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                               check=False)
            if p.returncode != 0:
                prof.error = (p.stderr or p.stdout).strip()[-300:]
                break
    finally:
        loader.join()
    prof.load = result[0] if result else None
    if not prof.error and raw.exists():
        prof.samples, prof.top = top_functions(raw.read_text())
    if not prof.error and native.exists():
        _, prof.native_top = top_functions(native.read_text(), 10)
    return prof
