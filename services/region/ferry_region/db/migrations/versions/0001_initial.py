"""Initial schema: hosts, storages, networks, images, servers, disks, NICs, tasks.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hosts',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('access_address', sa.String(length=256), nullable=False),
    sa.Column('status', sa.Enum('running', 'ready', 'shutdown', name='hoststatus', native_enum=False, length=32), nullable=False),
    sa.Column('host_status', sa.Enum('online', 'offline', name='hosthealth', native_enum=False, length=32), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('hypervisor', sa.String(length=32), nullable=False),
    sa.Column('cpu_model', sa.String(length=256), nullable=False),
    sa.Column('cpu_microcode', sa.String(length=64), nullable=False),
    sa.Column('kernel_version', sa.String(length=128), nullable=False),
    sa.Column('accelerator', sa.Enum('unspecified', 'kvm', 'tcg', name='accelerator', native_enum=False, length=32), nullable=False),
    sa.Column('cpu_count', sa.Integer(), nullable=False),
    sa.Column('cpu_cmtbound', sa.Float(), nullable=False),
    sa.Column('mem_size_mb', sa.BigInteger(), nullable=False),
    sa.Column('mem_cmtbound', sa.Float(), nullable=False),
    sa.Column('mem_reserved_mb', sa.BigInteger(), nullable=False),
    sa.Column('wire', sa.String(length=64), nullable=False),
    sa.Column('auto_migrate_on_host_down', sa.Boolean(), nullable=False),
    sa.Column('auto_migrate_on_host_shutdown', sa.Boolean(), nullable=False),
    sa.Column('agent_version', sa.String(length=64), nullable=False),
    sa.Column('registered_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hosts')),
    sa.UniqueConstraint('name', name=op.f('uq_hosts_name'))
    )
    op.create_table('images',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('format', sa.Enum('qcow2', 'raw', name='diskformat', native_enum=False, length=32), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('virtual_size_mb', sa.BigInteger(), nullable=False),
    sa.Column('checksum_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('saving', 'active', name='imagestatus', native_enum=False, length=32), nullable=False),
    sa.Column('min_memory_mb', sa.BigInteger(), nullable=False),
    sa.Column('file_name', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images')),
    sa.UniqueConstraint('name', name=op.f('uq_images_name'))
    )
    op.create_table('networks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('wire', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_networks'))
    )
    op.create_table('storages',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.Enum('local', 'shared', name='storagekind', native_enum=False, length=32), nullable=False),
    sa.Column('capacity_mb', sa.BigInteger(), nullable=False),
    sa.Column('free_mb', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_storages'))
    )
    op.create_table('tasks',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.Enum('server_create', 'server_start', 'server_stop', 'server_delete', 'server_migrate', 'server_live_migrate', name='taskkind', native_enum=False, length=32), nullable=False),
    sa.Column('state', sa.Enum('running', 'succeeded', 'failed', 'rolling_back', name='taskstate', native_enum=False, length=32), nullable=False),
    sa.Column('stage', sa.String(length=64), nullable=False),
    sa.Column('server_id', sa.String(length=64), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('error_reason', sa.String(length=64), nullable=False),
    sa.Column('history', sa.JSON(), nullable=False),
    sa.Column('resume_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks'))
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_server_id'), ['server_id'], unique=False)
        batch_op.create_index('ix_tasks_state_created', ['state', 'created_at'], unique=False)

    op.create_table('host_networks',
    sa.Column('host_id', sa.String(length=128), nullable=False),
    sa.Column('network', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], name=op.f('fk_host_networks_host_id_hosts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['network'], ['networks.name'], name=op.f('fk_host_networks_network_networks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('host_id', 'network', name=op.f('pk_host_networks'))
    )
    with op.batch_alter_table('host_networks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_host_networks_network'), ['network'], unique=False)

    op.create_table('host_storages',
    sa.Column('host_id', sa.String(length=128), nullable=False),
    sa.Column('storage_id', sa.String(length=128), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], name=op.f('fk_host_storages_host_id_hosts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['storage_id'], ['storages.id'], name=op.f('fk_host_storages_storage_id_storages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('host_id', 'storage_id', name=op.f('pk_host_storages'))
    )
    with op.batch_alter_table('host_storages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_host_storages_storage_id'), ['storage_id'], unique=False)

    op.create_table('servers',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('project', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Enum('init', 'scheduling', 'sched_fail', 'creating', 'create_fail', 'ready', 'starting', 'start_fail', 'running', 'stopping', 'stop_fail', 'deleting', 'delete_fail', 'start_migrate', 'migrating', 'live_migrating', 'migrate_failed', 'suspended', 'unknown', name='serverstatus', native_enum=False, length=32), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=False),
    sa.Column('host_id', sa.String(length=128), nullable=True),
    sa.Column('vcpu_count', sa.Integer(), nullable=False),
    sa.Column('memory_mb', sa.BigInteger(), nullable=False),
    sa.Column('image_id', sa.String(length=64), nullable=True),
    sa.Column('task_id', sa.String(length=64), nullable=True),
    sa.Column('progress', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], name=op.f('fk_servers_host_id_hosts'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_servers_image_id_images'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_servers')),
    sa.UniqueConstraint('name', name=op.f('uq_servers_name'))
    )
    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_servers_host_id'), ['host_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_servers_image_id'), ['image_id'], unique=False)
        batch_op.create_index('ix_servers_project_name', ['project', 'name'], unique=False)
        batch_op.create_index(batch_op.f('ix_servers_status'), ['status'], unique=False)

    op.create_table('disks',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('server_id', sa.String(length=64), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('storage_request', sa.String(length=128), nullable=False),
    sa.Column('storage_id', sa.String(length=128), nullable=True),
    sa.Column('size_mb', sa.BigInteger(), nullable=False),
    sa.Column('format', sa.Enum('qcow2', 'raw', name='diskformat', native_enum=False, length=32), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('image_id', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_disks_server_id_servers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['storage_id'], ['storages.id'], name=op.f('fk_disks_storage_id_storages'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_disks'))
    )
    with op.batch_alter_table('disks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_disks_server_id'), ['server_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_disks_storage_id'), ['storage_id'], unique=False)

    op.create_table('server_networks',
    sa.Column('server_id', sa.String(length=64), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('network', sa.String(length=64), nullable=False),
    sa.Column('mac', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_server_networks_server_id_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('server_id', 'index', name=op.f('pk_server_networks')),
    sa.UniqueConstraint('mac', name=op.f('uq_server_networks_mac'))
    )


def downgrade() -> None:
    op.drop_table('server_networks')
    with op.batch_alter_table('disks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_disks_storage_id'))
        batch_op.drop_index(batch_op.f('ix_disks_server_id'))

    op.drop_table('disks')
    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_servers_status'))
        batch_op.drop_index('ix_servers_project_name')
        batch_op.drop_index(batch_op.f('ix_servers_image_id'))
        batch_op.drop_index(batch_op.f('ix_servers_host_id'))

    op.drop_table('servers')
    with op.batch_alter_table('host_storages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_host_storages_storage_id'))

    op.drop_table('host_storages')
    with op.batch_alter_table('host_networks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_host_networks_network'))

    op.drop_table('host_networks')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_state_created')
        batch_op.drop_index(batch_op.f('ix_tasks_server_id'))

    op.drop_table('tasks')
    op.drop_table('storages')
    op.drop_table('networks')
    op.drop_table('images')
    op.drop_table('hosts')
