"""Access-control helpers shared by every connection: the failed-login back-off, the log of
recently issued CHAP challenges, and matching a connection's local address to a portal.

Sans-IO like login.py: nothing here sleeps or reads a socket. The back-off says how long a
verdict should wait; the server does the waiting. Time comes from an injectable clock.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_BASE_DELAY = 1.0  # seconds before the answer to a first failed login
DEFAULT_MAX_DELAY = 16.0  # the cap; below the default 30 s login timeout
FORGET_AFTER = 900.0  # a name/address with no failure for this long starts afresh
MAX_TRACKED = 4096  # failure records kept (oldest dropped): memory stays bounded
MAX_CHALLENGES = 4096  # recently issued CHAP challenges remembered


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


class LoginGuard:
    """Failed-login back-off per initiator name and per source address, and the log of CHAP
    challenges we issued (reflection across connections, RFC 7143 §12.1.3).

    A failure doubles the delay for that name and that address (``base``, ``2*base``, ...,
    capped at ``max_delay``); the delay applied is the larger of the two. Once a name or an
    address has failed, every CHAP verdict for it (success too) waits the current delay, so
    a guesser cannot tell a failure by its lateness and move on early.
    """

    def __init__(self, *, base_delay: float = DEFAULT_BASE_DELAY,
                 max_delay: float = DEFAULT_MAX_DELAY,
                 clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = MAX_TRACKED, max_challenges: int = MAX_CHALLENGES) -> None:
        self.base_delay = base_delay
        self.max_delay = max(max_delay, base_delay)
        self._clock = clock
        self._max_tracked = max_tracked
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self._challenges: OrderedDict[bytes, None] = OrderedDict()
        self._max_challenges = max_challenges

    # -- back-off --------------------------------------------------------------------------
    @staticmethod
    def _keys(initiator_name: str, address: str) -> tuple[str, str]:
        # Names compare case-folded (RFC 3722 stringprep); "n:" / "a:" keep the spaces apart.
        return "n:" + initiator_name.lower(), "a:" + address

    def _count(self, key: str, now: float) -> int:
        rec = self._failures.get(key)
        if rec is None:
            return 0
        if now - rec.last > FORGET_AFTER:
            del self._failures[key]
            return 0
        return rec.count

    def _delay_for(self, count: int) -> float:
        if count <= 0 or self.base_delay <= 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(count - 1, 32)))

    def penalty(self, initiator_name: str, address: str) -> float:
        """The delay a verdict for this name/address waits now (0 with no recent failure)."""
        now = self._clock()
        count = max(self._count(k, now) for k in self._keys(initiator_name, address))
        return self._delay_for(count + 1) if count else 0.0

    def failed(self, initiator_name: str, address: str) -> float:
        """Record a failed login; return how long to hold its failure response."""
        now = self._clock()
        worst = 0
        for key in self._keys(initiator_name, address):
            count = self._count(key, now) + 1
            self._failures[key] = _Failures(count, now)
            self._failures.move_to_end(key)
            worst = max(worst, count)
        while len(self._failures) > self._max_tracked:
            self._failures.popitem(last=False)
        return self._delay_for(worst)

    def succeeded(self, initiator_name: str, address: str) -> float:
        """An initiator proved its credentials: return the delay its verdict waits (as a
        failure's would), and forget the name's failures. The address keeps its record:
        another host behind it may be the one guessing."""
        delay = self.penalty(initiator_name, address)
        self._failures.pop(self._keys(initiator_name, address)[0], None)
        return delay

    # -- CHAP challenges we issued ---------------------------------------------------------
    def issued(self, challenge: bytes) -> None:
        self._challenges[challenge] = None
        self._challenges.move_to_end(challenge)
        while len(self._challenges) > self._max_challenges:
            self._challenges.popitem(last=False)

    def was_issued(self, challenge: bytes) -> bool:
        return challenge in self._challenges


# -- portals -------------------------------------------------------------------------------------


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def portal_matches(host: str, port: int, local_addr: tuple[str, int]) -> bool:
    """Did a connection that arrived on ``local_addr`` come in through portal host:port?

    A wildcard portal (0.0.0.0, ::) takes every address of its family; config refuses to
    bind a target to a portal given as a host name, so ``host`` is an IP address here.
    """
    if port != local_addr[1]:
        return False
    portal_ip, local_ip = _ip(host), _ip(local_addr[0])
    if portal_ip is None or local_ip is None:
        return host == local_addr[0]
    if portal_ip.is_unspecified:
        # a dual-stack "::" listener also takes IPv4 (seen as v4-mapped, unwrapped above)
        return portal_ip.version == local_ip.version or portal_ip.version == 6
    return portal_ip == local_ip
