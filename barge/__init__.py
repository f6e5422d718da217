"""Barge: a data mover for Velero's CSI snapshot data movement (DataUpload / DataDownload)."""

__version__ = "0.1.0.dev0"
