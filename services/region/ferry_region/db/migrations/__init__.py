"""Alembic migration environment of the region database."""
