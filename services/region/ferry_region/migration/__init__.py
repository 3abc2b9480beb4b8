"""Region side of migrations: placement, the migration tasks, progress."""
