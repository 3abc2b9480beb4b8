"""Inventory database: models, engine, Alembic migrations, conditional transitions."""

from .engine import Database

__all__ = ["Database"]
