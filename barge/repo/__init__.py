"""Barge's deduplicating, compressed, encrypted backup repository (format: docs/repository-format.md)."""
