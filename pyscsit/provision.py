"""Running the storage tools (`zfs`, `lvm`): one error per failure, and undo on failure.

Every tool failure becomes one ProvisionError whose message is a single line: the command
line, the exit status and the tool's own last line of complaint. Multi-step operations
register an undo for each step done (``Undo``); if a later step fails, the done steps are
undone in reverse order, so nothing is left half-created.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Self

__all__ = [
    "ProvisionError", "Runner", "Undo", "check_name", "run_tool", "wait_for_device",
    "wait_for_device_gone",
]

#: runs argv, returns stdout, raises ProvisionError. Tests pass their own.
Runner = Callable[[Sequence[str]], str]

TOOL_TIMEOUT = 300.0  # seconds: `zfs destroy` of a large volume can take a while
DEVICE_TIMEOUT = 20.0  # seconds for udev to create the device node after a create


class ProvisionError(Exception):
    """A storage tool failed, or its result never appeared. One line of text."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def run_tool(argv: Sequence[str], timeout: float = TOOL_TIMEOUT) -> str:
    """Run a storage tool; its stdout, or ProvisionError naming the command and its complaint."""
    shown = shlex.join(argv)
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                           timeout=timeout, stdin=subprocess.DEVNULL, check=False,
                           env=dict(os.environ, LC_ALL="C"))
    except FileNotFoundError:
        raise ProvisionError(f"{argv[0]}: command not found (install it, or set its path as "
                             "`command` in the config's zfs: / lvm: section)") from None
    except PermissionError:
        raise ProvisionError(f"{argv[0]}: permission denied") from None
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"`{shown}` did not finish within {timeout:g} s") from None
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else "no message"
        raise ProvisionError(f"`{shown}` failed (exit {p.returncode}): {why}")
    return p.stdout


def wait_for_device(path: str, timeout: float | None = None) -> None:
    """Wait for a device node to appear (udev creates zvol and LV links asynchronously)."""
    timeout = DEVICE_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise ProvisionError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.05)


def wait_for_device_gone(path: str, timeout: float | None = None) -> None:
    timeout = DEVICE_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


class Undo:
    """Undo steps, run in reverse when the ``with`` block fails.

    ``with Undo() as undo: create(); undo.push("destroy x", destroy)``. An undo that fails
    too is added to the error's message (the user must clean that up by hand).
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        failed: list[str] = []
        for what, fn in reversed(self._steps):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep undoing the rest
                failed.append(f"{what}: {e}")
        if failed and isinstance(exc, ProvisionError):
            exc.args = (f"{exc.args[0]}; undo failed too, clean up by hand: "
                        + "; ".join(failed),)


def check_name(kind: str, name: str, *, extra: str = "") -> str:
    """A volume/dataset/snapshot name component: no spaces, never starting with '-' (it would
    be read as an option), only the characters the tools accept (plus ``extra``)."""
    ok = re.fullmatch(rf"[A-Za-z0-9_.:+{re.escape(extra)}-]+", name) is not None
    if not name or name.startswith("-") or not ok or name in (".", ".."):
        raise ProvisionError(f"{name!r} is not a valid {kind} name (letters, digits and "
                             f"_ . : + -{' ' + extra if extra else ''}; not starting with -)")
    return name
