"""Host side of migrations: live (QMP drive-mirror + memory) and cold (disk copy)."""
