"""Backing stores. A backend only does I/O; it never sees a CDB."""
