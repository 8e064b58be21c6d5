"""SCSI emulation. Never imports the iSCSI PDU layer (pyscsit.pdu)."""
