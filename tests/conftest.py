"""Shared pytest set-up: fixtures live in tests/fixtures, one module per real part."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = [
    "fixtures.etcd_server",
    "fixtures.postgres_server",
    "fixtures.cluster",
]
