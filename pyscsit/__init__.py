"""pyscsit: a userspace iSCSI target server in Python on asyncio."""

__version__ = "0.1.0"
