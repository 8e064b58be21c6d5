"""What the `zfs` and `lvm` command layers (zvol.py, lvm.py) share: the command, where the
volumes' device nodes appear, and creating a volume so that it completes or leaves nothing."""

from __future__ import annotations

from collections.abc import Callable

from pyscsit.provision import Runner, Undo, run_tool, wait_for_device


class VolumeTool:
    """A storage tool's command line and the folder its device nodes appear in."""

    def __init__(self, command: str, dev_root: str, runner: Runner = run_tool) -> None:
        self.command = command
        self.dev_root = dev_root
        self._run = runner

    def _create(self, argv: list[str], device: str, undo: str,
                destroy: Callable[[], object]) -> str:
        """Run ``argv`` (it creates a volume) and wait for the volume's ``device`` node; if
        that never appears, the volume is destroyed again (``undo`` says how, for errors)."""
        with Undo() as undoer:
            self._run(argv)
            undoer.push(undo, destroy)
            wait_for_device(device)
        return device
