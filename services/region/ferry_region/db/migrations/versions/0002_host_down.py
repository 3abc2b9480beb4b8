"""Host down: etcd health watch cursor, health keys seen, host-down incidents.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('health_cursor',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('revision', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_health_cursor'))
    )
    op.create_table('health_keys',
    sa.Column('host_id', sa.String(length=128), nullable=False),
    sa.Column('create_revision', sa.BigInteger(), nullable=False),
    sa.Column('present', sa.Boolean(), nullable=False),
    sa.Column('shutdown', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('host_id', name=op.f('pk_health_keys'))
    )
    op.create_table('host_down_incidents',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('host_id', sa.String(length=128), nullable=False),
    sa.Column('key_revision', sa.BigInteger(), nullable=False),
    sa.Column('seen_revision', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.Enum('waiting', 'paused', 'rescuing', 'done', 'cancelled', name='incidentstate', native_enum=False, length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=False),
    sa.Column('detected_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_host_down_incidents')),
    sa.UniqueConstraint('host_id', 'key_revision', name=op.f('uq_host_down_incidents_host_id_key_revision'))
    )
    op.create_index('ix_host_down_incidents_state_detected', 'host_down_incidents', ['state', 'detected_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_host_down_incidents_state_detected', table_name='host_down_incidents')
    op.drop_table('host_down_incidents')
    op.drop_table('health_keys')
    op.drop_table('health_cursor')
