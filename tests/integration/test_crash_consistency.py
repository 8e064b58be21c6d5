"""Nothing acknowledged is lost (issue 5): `pyscsit serve` is killed with SIGKILL right after
it acknowledges a write made durable (SYNCHRONIZE CACHE, or FUA), and the backing file, read
directly and then through a restarted server, holds the data. A connection dropped in the
middle of a write changes no block, neither its own nor any other.

What SIGKILL proves: the server keeps no acknowledged data in its own memory (the page cache
outlives the process). That the kernel is asked to put it on stable storage before the
acknowledgement (RWF_DSYNC / fdatasync) is the file backend's part, tested with it.
"""

from __future__ import annotations

import random
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from pyscsit import pdu as P
from tests.integration.conftest import IQN, RunningServer, file_lun_config, start_server
from tests.support.initiator import Initiator
from tests.support.rigs import begin_write
from tests.support.scsi import read16, write16

pytestmark = pytest.mark.integration

BLOCK = 512
GOOD = 0x00
SYNCHRONIZE_CACHE_10 = bytes([0x35]) + bytes(9)


def kill(server: RunningServer) -> None:
    server.proc.send_signal(signal.SIGKILL)
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    assert "Traceback" not in server.log(), server.log()


def on_disk(path: Path, lba: int, blocks: int) -> bytes:
    with path.open("rb") as f:
        f.seek(lba * BLOCK)
        return f.read(blocks * BLOCK)


def session(server: RunningServer, *, initial_r2t: bool = False,
            immediate_data: bool = True) -> Initiator:
    ini = Initiator.connect(server.host, server.port)
    ini.login(IQN, initial_r2t=initial_r2t, immediate_data=immediate_data)
    ini.scsi(bytes(6))  # the power-on unit attention, if any
    return ini


@pytest.mark.parametrize("how", ["sync-cache", "fua"])
def test_acknowledged_durable_writes_survive_sigkill(tmp_path: Path, how: str) -> None:
    cfg = file_lun_config(tmp_path, size="16MiB")
    disk = tmp_path / "disk0.img"
    rng = random.Random(how)
    written: dict[int, bytes] = {}
    server = start_server(tmp_path, cfg)
    try:
        ini = session(server)
        for _ in range(24):  # scattered writes of 1 to 64 blocks, some overlapping
            lba, blocks = rng.randrange(0, 32768 - 64), rng.randrange(1, 65)
            data = rng.randbytes(blocks * BLOCK)
            reply = ini.scsi(write16(lba, blocks, fua=how == "fua"), data_out=data)
            assert reply.status == GOOD
            for i in range(blocks):
                written[lba + i] = data[i * BLOCK:(i + 1) * BLOCK]
        if how == "sync-cache":
            assert ini.scsi(SYNCHRONIZE_CACHE_10).status == GOOD
        kill(server)  # the moment the last acknowledgement is in
        ini.close()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    for lba, block in written.items():
        assert on_disk(disk, lba, 1) == block, f"LBA {lba} lost"
    # and a restarted server serves the same blocks
    again = start_server(tmp_path, cfg, name="again.yaml")
    try:
        with session(again) as ini:
            for lba, block in list(written.items())[::37]:
                reply = ini.scsi(read16(lba, 1), read_len=BLOCK)
                assert reply.status == GOOD and reply.data == block
    finally:
        assert again.stop() == 0, again.log()


def test_connection_dropped_mid_write_changes_no_block(tmp_path: Path) -> None:
    cfg = file_lun_config(tmp_path, size="4MiB")
    disk = tmp_path / "disk0.img"
    original = random.Random(3).randbytes(2048 * BLOCK)  # LBAs 0..2047
    server = start_server(tmp_path, cfg)
    try:
        with session(server) as ini:
            assert ini.scsi(write16(0, 2048, fua=True), data_out=original).status == GOOD
        for solicited in (True, False):
            ini = session(server, initial_r2t=solicited, immediate_data=not solicited)
            new = random.Random(solicited).randbytes(512 * BLOCK)  # 256 KiB at LBA 512
            itt, ttt, offset = begin_write(ini, write16(512, 512), new, solicited=solicited)
            for sn in range(4):  # 32 KiB of the 256, then a reset, not a goodbye
                chunk = new[offset: offset + 8192]
                ini.send(P.DataOut(itt=itt, ttt=ttt, data_sn=sn, buffer_offset=offset,
                                   data=chunk))
                offset += len(chunk)
            ini.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ini.close()
        time.sleep(0.3)
        with session(server) as ini:  # the server is fine, and so is every block
            reply = ini.scsi(read16(0, 2048), read_len=len(original))
            assert reply.status == GOOD and reply.data == original
        kill(server)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    assert disk.read_bytes()[: len(original)] == original
