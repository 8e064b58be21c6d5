"""Per-LU identity (NAA-6 designator + serial number), random and persistent.

VMware merges LUNs whose VPD 0x83 identifiers collide and treats a LUN whose identifier
changes as a snapshot, so identities are random, created once per backend locator and kept in
``<state_dir>/lu-identities.json``; never derived from target or LUN numbers.

NAA type 6 "IEEE Registered Extended" (SPC-4 7.8.6.6.5): NAA nibble, 24-bit IEEE company ID,
36-bit vendor specific identifier, 64-bit vendor specific identifier extension. We are not an
IEEE registrant, so the company ID is ``PYSCSIT_CID`` = 0x5A5059, a value in the IEEE CID space
reserved for local administration (first octet's low nibble 0xA: the U/L bit set, M bit
clear, so it can never equal a registered OUI). The remaining 100 bits are random.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pyscsit.files import write_atomic

PYSCSIT_CID = 0x5A5059
_FILE_NAME = "lu-identities.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LuIdentity:
    naa: bytes  # 16 bytes, NAA type 6 (IEEE Registered Extended), random
    serial: str  # VPD 0x80 unit serial number, printable ASCII

    def __post_init__(self) -> None:
        if len(self.naa) != 16 or self.naa[0] >> 4 != 6:
            raise ValueError("naa must be 16 bytes of NAA type 6")
        if not self.serial or not all(0x20 < ord(c) < 0x7F for c in self.serial):
            raise ValueError("serial must be non-empty printable ASCII without spaces")

    @classmethod
    def random(cls) -> LuIdentity:
        vendor = secrets.randbits(100)  # 36-bit VSI + 64-bit VSI extension
        value = (6 << 124) | (PYSCSIT_CID << 100) | vendor
        naa = value.to_bytes(16, "big")
        return cls(naa=naa, serial=secrets.token_hex(10))


class IdentityStore:
    """Loads or creates the identity for a locator (e.g. ``file:/srv/a.img``)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self._dir = Path(state_dir)
        self._path = self._dir / _FILE_NAME
        self._ids: dict[str, LuIdentity] = self._load()

    @property
    def path(self) -> Path:
        return self._path

    def _load(self) -> dict[str, LuIdentity]:
        try:
            raw = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            entries = doc["identities"]
            return {
                loc: LuIdentity(bytes.fromhex(e["naa"]), str(e["serial"]))
                for loc, e in entries.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Never silently replace identities: a new NAA makes VMware see a different disk.
            raise ValueError(f"{self._path}: unreadable LU identity file: {exc}") from exc

    def get(self, locator: str) -> LuIdentity:
        ident = self._ids.get(locator)
        if ident is None:
            ident = LuIdentity.random()
            while any(ident.naa == other.naa for other in self._ids.values()):
                ident = LuIdentity.random()  # 2**-100 odds, but cheap to rule out
            self._ids[locator] = ident
            self._save()
        return ident

    def _save(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "version": _FORMAT_VERSION,
            "identities": {
                loc: {"naa": i.naa.hex(), "serial": i.serial}
                for loc, i in sorted(self._ids.items())
            },
        }
        write_atomic(self._path, json.dumps(doc, indent=2) + "\n", 0o644)
