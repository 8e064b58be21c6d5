"""The workloads: one table of cases, the client command lines they run, and their parsers.

The same client binary and arguments run against both targets; only the portal, IQN and LUN
differ. Every client is bounded: iscsi-perf by ``timeout -s INT``, qemu-img by a request count
and a subprocess timeout.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import subprocess
import time
from dataclasses import dataclass

from benchmarks.servers import LU_SIZE, RssSampler, Server, cpu_seconds

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class Case:
    """One workload. ``kind``: "perf" (iscsi-perf), "bench" (qemu-img bench), "convert"."""

    key: str
    label: str
    kind: str
    size: int = 4 * KiB
    depth: int = 32
    write: bool = False
    digest: bool = False
    sessions: int = 1
    count: int = 0  # qemu-img bench requests (full run)


def _bench(size: int, depth: int, write: bool, digest: bool, count: int) -> Case:
    unit = f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"
    rw = "write" if write else "read"
    key = f"bench-{size // KiB}k-qd{depth}-{rw[0]}{'-hd' if digest else ''}"
    label = f"{unit} seq {rw} QD{depth}{' +HD' if digest else ''}"
    return Case(key, label, "bench", size, depth, write, digest, count=count)


def all_cases() -> list[Case]:
    """Each digest-on case right after its digest-off twin: the digest cost compares runs
    seconds apart, not minutes (the load from other work on the machine drifts)."""
    cases = [Case(f"perf-4k-rand-r-s{n}", f"4 KiB rand read QD32 x{n} sess", "perf", sessions=n)
             for n in (1, 4, 16)]
    # counts are sized for ~1-3 s on the slower target on the reference machine
    for size, depth, count_r, count_w in ((4 * KiB, 1, 10000, 10000),
                                          (4 * KiB, 32, 60000, 40000),
                                          (128 * KiB, 8, 12000, 10000),
                                          (1 * MiB, 4, 3072, 2048)):
        for write, count in ((False, count_r), (True, count_w)):
            cases += [_bench(size, depth, write, False, count),
                      _bench(size, depth, write, True, count)]
    cases += [Case("convert", "convert 1 GiB LU", "convert", size=LU_SIZE, depth=8),
              Case("convert-hd", "convert 1 GiB LU +HD", "convert", size=LU_SIZE, depth=8,
                   digest=True)]
    return cases


@dataclass(frozen=True, slots=True)
class Settings:
    perf_seconds: int  # iscsi-perf run time
    count_scale: float  # multiplies Case.count


def commands(case: Case, server: Server, settings: Settings) -> list[list[str]]:
    """The argv of each client process one run of ``case`` starts (several for sessions > 1)."""
    if case.kind == "perf":
        secs = str(settings.perf_seconds)
        return [["timeout", "-k", "10", "-s", "INT", secs, "iscsi-perf",
                 "-i", f"iqn.2026-11.org.pyscsit.bench:client-{i}", "-r", "-m", "32", "-b", "8",
                 server.url()] for i in range(case.sessions)]
    opts = server.image_opts(case.digest)
    if case.kind == "bench":
        count = max(int(case.count * settings.count_scale), case.depth * 16)
        argv = ["qemu-img", "bench", "-t", "none", "-n", "-d", str(case.depth),
                "-s", str(case.size), "-c", str(count)]
        if case.write:
            argv.append("-w")
        return [argv + ["--image-opts", opts]]
    return [["qemu-img", "convert", "-n", "--image-opts", opts,
             "--target-image-opts", f"driver=null-co,size={LU_SIZE}"]]


_PERF_LINE = re.compile(r"(\d+):(\d\d):(\d\d) - lba \d+, iops current (\d+) \(\d+ MB/s\), "
                        r"iops average (\d+)")
_BENCH_DONE = re.compile(r"Run completed in ([0-9.]+) seconds")
_BENCH_SENT = re.compile(r"Sending (\d+) (?:read|write) requests, (\d+) bytes each")


def parse_perf(text: str) -> tuple[float, float, float]:
    """iscsi-perf's progress lines -> (seconds, I/Os in total, steady IOPS).

    Totals are its last running average times its clock (for CPU per GB); the steady rate is
    the mean of its per-second "current" figures after the first second (login, ramp-up).
    """
    matches = _PERF_LINE.findall(text)
    if not matches:
        raise ValueError("no iscsi-perf progress line")
    h, m, s, _cur, avg = (int(x) for x in matches[-1])
    seconds = h * 3600 + m * 60 + s
    steady = [int(c) for *_, c, _a in matches[1:]] or [int(matches[0][3])]
    return float(seconds), float(avg * seconds), sum(steady) / len(steady)


def parse_bench(text: str) -> tuple[float, float, int]:
    """qemu-img bench output -> (seconds, requests, bytes per request)."""
    done = _BENCH_DONE.search(text)
    sent = _BENCH_SENT.search(text)
    if not done or not sent:
        raise ValueError("no qemu-img bench summary")
    return float(done.group(1)), float(sent.group(1)), int(sent.group(2))


@dataclass(slots=True)
class RunResult:
    case: str
    server: str
    pair: int
    order: int  # 0 when this server ran first in its pair
    ok: bool
    seconds: float = 0.0
    iops: float = 0.0
    mb_s: float = 0.0  # 10^6 bytes per second
    cpu_s: float = 0.0
    cpu_s_per_gb: float = 0.0  # server CPU seconds per 10^9 bytes moved
    rss_peak_mib: float = 0.0
    loadavg: float = 0.0  # 1-minute load when the run started (other work on the machine)
    client_cpu_s: float = 0.0  # CPU of the client processes (and their children)
    other_cpus: float = 0.0  # vCPUs busy (user+system) with neither server nor client:
    # other processes and kernel threads (writeback), averaged over the run
    steal_cpus: float = 0.0  # vCPUs' worth of time the hypervisor gave to others
    error: str = ""


def run_case(case: Case, server: Server, settings: Settings, pair: int, order: int,
             timeout: float = 180.0) -> RunResult:
    server.set_header_digest(case.digest)
    argvs = commands(case, server, settings)
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    res = RunResult(case.key, server.name, pair, order, ok=False, loadavg=load)
    cpu0 = cpu_seconds(server.pid)
    busy0, steal0 = _system_cpu()
    kids0 = _children_cpu()
    t0 = time.monotonic()
    with RssSampler(server.pid) as rss:
        procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL) for a in argvs]
        outs = []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(timeout - (time.monotonic() - t0), 1))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            outs.append((p.returncode, out.decode(errors="replace")))
    wall = time.monotonic() - t0
    res.cpu_s = cpu_seconds(server.pid) - cpu0
    busy1, steal1 = _system_cpu()
    res.client_cpu_s = _children_cpu() - kids0
    res.other_cpus = max(busy1 - busy0 - res.cpu_s - res.client_cpu_s, 0.0) / wall
    res.steal_cpus = (steal1 - steal0) / wall
    res.rss_peak_mib = rss.peak_kib / 1024
    try:
        seconds, _ios, nbytes, iops = _measure(case, outs, wall)
    except ValueError as e:
        tail = " | ".join(o.strip().splitlines()[-1] if o.strip() else f"rc={rc}"
                          for rc, o in outs)[-300:]
        res.error = f"{e}: {tail}"
        return res
    res.ok = True
    res.seconds = seconds
    res.iops = iops
    res.mb_s = iops * 4 * KiB / 1e6 if case.kind == "perf" else nbytes / seconds / 1e6
    res.cpu_s_per_gb = res.cpu_s / (nbytes / 1e9) if nbytes else 0.0
    return res


def _system_cpu() -> tuple[float, float]:
    """(busy, steal) seconds summed over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    # softirq left out: loopback TCP is mostly softirq work done for our own processes
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = v[:8]
    return (user + nice + system) / tck, steal / tck


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _measure(case: Case, outs: list[tuple[int, str]],
             wall: float) -> tuple[float, float, int, float]:
    """-> (seconds, I/Os, bytes, IOPS) for the whole run (summed over sessions)."""
    if case.kind == "perf":
        seconds, ios, rate = 0.0, 0.0, 0.0
        for rc, text in outs:
            if rc not in (0, 124):  # 124: timeout delivered the SIGINT that ends it
                raise ValueError(f"iscsi-perf exited {rc}")
            s, n, r = parse_perf(text)
            seconds, ios, rate = max(seconds, s), ios + n, rate + r
        return seconds, ios, int(ios * 4 * KiB), rate
    rc, text = outs[0]
    if rc != 0:
        raise ValueError(f"qemu-img exited {rc}")
    if case.kind == "bench":
        seconds, reqs, size = parse_bench(text)
        return seconds, reqs, int(reqs * size), reqs / seconds
    # convert: wall time of the whole process (start-up and login included); MB/s only
    return wall, 0.0, LU_SIZE, 0.0


def describe(case: Case, server: Server, settings: Settings) -> str:
    argvs = commands(case, server, settings)
    text = shlex.join(argvs[0])
    if len(argvs) > 1:
        text += f"  # x{len(argvs)} at once, client-0..{len(argvs) - 1}"
    return text
