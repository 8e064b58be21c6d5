"""Server CPU per command, without sockets: the event-loop cost of pyscsit's data path.

    python -m benchmarks.loop [--ops N] [--qd 32] [--size 4096] [--write] [--hd] [--repeat 3]
                              [--profile]

Drives the real ``server.IscsiProtocol`` on uvloop with a fake transport: one login, then
batches of QD SCSI commands (READ(10)/WRITE(10) with immediate data, as libiscsi and qemu send
them) handed to ``data_received`` at once, the way a pipelining initiator's bytes arrive. The
LU is a FileBackend over a cached 64 MiB file. It prints process CPU microseconds per command (best of --repeat runs)
and how many ``writelines`` calls (one ``writev`` each on a real socket) the server made per
command. Nothing else runs, so the figure is steady on a busy machine, unlike the end-to-end
runs of benchmarks.run; it is the number to watch while changing the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import struct
import tempfile
import time
from typing import Any

from pyscsit import pdu as P
from pyscsit.backends.file import FileBackend
from pyscsit.keys import encode_text
from pyscsit.scsi.identity import LuIdentity
from pyscsit.scsi.lu import LogicalUnit
from pyscsit.server import IscsiProtocol, IscsiServer
from pyscsit.target import Auth, Model, Portal, Target

IQN = "iqn.2026-11.org.pyscsit.bench:loop"
LU_BYTES = 64 << 20
BLOCK = 512


class FakeTransport:
    """Just enough of asyncio.Transport: counts writelines calls and output bytes."""

    def __init__(self) -> None:
        self.calls = 0
        self.nbytes = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3260), "peername": ("127.0.0.1", 40000)}.get(
            name, default)

    def writelines(self, bufs: list[Any]) -> None:
        self.calls += 1
        for b in bufs:
            self.nbytes += b.nbytes if isinstance(b, memoryview) else len(b)

    def write(self, b: Any) -> None:
        self.writelines([b])

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _cdb(op: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0) + bytes(6)


async def _bench(args: argparse.Namespace, path: str) -> None:
    backend = FileBackend.open(path)
    lu = LogicalUnit(backend, LuIdentity.random())
    model = Model(portals=[Portal("127.0.0.1", 3260)],
                  targets={IQN: Target(IQN, Auth(), luns={0: lu})}, state_dir=path + ".state")
    server = IscsiServer(model)
    proto = IscsiProtocol(server)
    tr = FakeTransport()
    proto.connection_made(tr)  # type: ignore[arg-type]
    keys = {"InitiatorName": "iqn.2026-11.org.pyscsit.bench:host", "SessionType": "Normal",
            "TargetName": IQN, "HeaderDigest": "CRC32C" if args.hd else "None",
            "DataDigest": "None", "MaxRecvDataSegmentLength": "262144",
            "ImmediateData": "Yes", "InitialR2T": "No", "FirstBurstLength": "262144",
            "MaxBurstLength": "16776192", "ErrorRecoveryLevel": "0"}
    cmd_sn = 1
    proto.data_received(P.encode_bytes(P.LoginRequest(
        final=True, csg=1, nsg=3, isid=0x800000000001, itt=0xEE, cmd_sn=cmd_sn,
        data=encode_text(keys.items()))))
    blocks = args.size // BLOCK
    payload = os.urandom(args.size) if args.write else b""
    span = LU_BYTES // args.size
    itt = 0

    def batch() -> bytes:
        nonlocal itt, cmd_sn
        out = []
        for _ in range(args.qd):
            itt += 1
            lba = (itt * 7919 % span) * blocks
            pdu = P.ScsiCommandPdu(final=True, read=not args.write, write=args.write,
                                   itt=itt, cmd_sn=cmd_sn, expected_length=args.size,
                                   cdb=_cdb(0x2A if args.write else 0x28, lba, blocks),
                                   data=payload)
            cmd_sn += 1
            out.append(P.encode_bytes(pdu, args.hd, False))
        return b"".join(out)

    sess = proto.conn.session
    assert sess is not None, "login failed"
    await asyncio.sleep(0)
    prof = cProfile.Profile() if args.profile else None
    best = float("inf")
    for _ in range(args.repeat):
        batches = [batch() for _ in range(max(1, args.ops // args.qd))]
        calls0, bytes0 = tr.calls, tr.nbytes
        # process CPU time (the pool threads' too): steadier than wall time on a busy machine
        t0 = time.process_time()
        if prof:
            prof.enable()
        for b in batches:
            proto.data_received(b)
            # let suspended tasks (thread-pool I/O) finish before the next batch: QD stays QD
            while sess.tasks:
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        if prof:
            prof.disable()
        dt = time.process_time() - t0
        n = len(batches) * args.qd
        calls = tr.calls - calls0
        best = min(best, dt / n)
        print(f"{'write' if args.write else 'read'} {args.size} B QD{args.qd}"
              f"{' +HD' if args.hd else ''}: {n} commands, {dt / n * 1e6:.2f} us CPU/command,"
              f" {calls / n:.3f} writelines/command, {(tr.nbytes - bytes0) / n:.0f} B out"
              "/command", flush=True)
    print(f"best of {args.repeat}: {best * 1e6:.2f} us CPU/command")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    proto.connection_lost(None)
    backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.loop")
    ap.add_argument("--ops", type=int, default=64000)
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--hd", action="store_true", help="header digests")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    ap.add_argument("--profile", action="store_true", help="cProfile, top 25 by own time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyscsit-loop-", dir="/var/tmp") as d:
        path = os.path.join(d, "lu.img")
        with open(path, "wb") as f:
            chunk = os.urandom(1 << 20)
            f.writelines(chunk for _ in range(LU_BYTES >> 20))
        try:
            import uvloop

            uvloop.run(_bench(args, path))
        except ImportError:
            asyncio.run(_bench(args, path))


if __name__ == "__main__":
    main()
