"""The layers DESIGN.md promises, checked on the source: the SCSI layer never imports the iSCSI
layers, backends never see a CDB (they import nothing of pyscsit.scsi), and server.py is the only
module that touches sockets or asyncio transports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ISCSI = {"pyscsit.pdu", "pyscsit.session", "pyscsit.session_state", "pyscsit.server",
         "pyscsit.login", "pyscsit.keys", "pyscsit.chap"}
SOCKET_NAMES = {"socket", "create_server", "open_connection", "start_server", "Transport",
                "BaseTransport", "Protocol", "BufferedProtocol"}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            | _imports(path))


def test_scsi_layer_never_imports_the_iscsi_layer() -> None:
    for path in sorted((ROOT / "pyscsit" / "scsi").glob("*.py")):
        bad = {m for m in _imports(path) if any(m == i or m.startswith(i + ".") for i in ISCSI)}
        assert not bad, f"{path.name} imports {bad}"


def test_backends_never_see_a_cdb() -> None:
    for path in sorted((ROOT / "backends").glob("*.py")):
        bad = {m for m in _imports(path)
               if m.startswith("pyscsit.scsi") or any(m.startswith(i) for i in ISCSI)}
        assert not bad, f"backends/{path.name} imports {bad}"


def test_server_is_the_only_socket_code() -> None:
    for path in sorted((ROOT / "pyscsit").rglob("*.py")):
        if path.name == "server.py":
            continue
        used = _names(path) & SOCKET_NAMES
        assert not used, f"{path.relative_to(ROOT)} uses {used}"
