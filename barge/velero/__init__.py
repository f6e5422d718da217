"""Velero's vocabulary, read purely: BackupStorageLocations, durations, CR fields."""
