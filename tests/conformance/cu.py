"""Run libiscsi's conformance suite (iscsi-test-cu) one family per process and read its
per-test verdicts.

One process per family: in libiscsi 1.19 a CompareAndWrite test leaves a patched send
function behind that corrupts later 16-byte CDBs in the same process.

A test counts as passed only when CUnit says "passed" and the test printed no "[SKIPPED]"
on the way (libiscsi passes a test whose command is "not implemented"; that is not a pass).

    python -m tests.conformance.cu URL [URL2] [--family Read10 ...]   # print verdicts

A URL may hold "{lun}": family number i of the run then uses LUN i, so every family starts on
a fresh LU (serve as many LUNs as families).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
PASSING = HERE / "passing.txt"
_TEST = re.compile(r"Test: (\S+) \.\.\.(.*?)(?<!\[)(passed|FAILED)(?!\])", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    name: str  # ALL.Family.Test
    status: str  # "passed", "skipped", "failed", "missing"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "passed"


def parse(family: str, output: str) -> dict[str, Verdict]:
    out: dict[str, Verdict] = {}
    for m in _TEST.finditer(output):
        name = f"ALL.{family}.{m.group(1)}"
        body = m.group(2)
        if m.group(3) == "FAILED":
            out[name] = Verdict(name, "failed", body.strip()[-2000:])
        elif "[SKIPPED]" in body:
            skipped = [ln.strip() for ln in body.splitlines() if "[SKIPPED]" in ln]
            out[name] = Verdict(name, "skipped", "; ".join(dict.fromkeys(skipped)))
        else:
            out[name] = Verdict(name, "passed")
    return out


def run_family(family: str, urls: list[str], timeout: float = 600,
               extra: tuple[str, ...] = ("--dataloss", "--allow-sanitize")) -> tuple[
                   dict[str, Verdict], str]:
    cmd = ["iscsi-test-cu", *extra, f"--test=ALL.{family}", *urls]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                           timeout=timeout, check=False)  # failures are in the output
        output = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(
            e.stdout, bytes) else (e.stdout or "")
        output += f"\n[pyscsit] iscsi-test-cu timed out after {timeout}s"
    return parse(family, output), output


def load_list(path: Path = PASSING) -> OrderedDict[str, list[str]]:
    """passing.txt: one ALL.Family.Test per line; '#' comments. Grouped by family."""
    fams: OrderedDict[str, list[str]] = OrderedDict()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(".")
        if len(parts) != 3 or parts[0] != "ALL":
            raise ValueError(f"{path}: not ALL.Family.Test: {line!r}")
        fams.setdefault(parts[1], []).append(line)
    return fams


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("urls", nargs="+")
    ap.add_argument("--family", action="append", help="default: every family in --list")
    args = ap.parse_args(argv)
    fams = args.family
    if not fams:
        lst = subprocess.run(["iscsi-test-cu", "--list"], capture_output=True, text=True,
                             check=False)
        fams = sorted({ln.split(".")[1] for ln in lst.stdout.split()
                       if ln.startswith("ALL.") and ln.count(".") == 2})
    total = {"passed": 0, "skipped": 0, "failed": 0}
    for i, fam in enumerate(fams):
        verdicts, _ = run_family(fam, [u.replace("{lun}", str(i)) for u in args.urls])
        for v in verdicts.values():
            total[v.status] = total.get(v.status, 0) + 1
            print(f"{v.status:8} {v.name}  {v.detail.splitlines()[-1] if v.detail else ''}")
        sys.stdout.flush()
    print(f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
