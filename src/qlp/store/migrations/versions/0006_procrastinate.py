"""The job queue's tables: procrastinate's schema, version 3.10.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Procrastinate (engine/jobs.py) keeps its jobs, workers and events in tables of its own
(`procrastinate_*`). Its schema is applied here, from the installed package, so one
`qlp db upgrade` (run by every QLP process at start) prepares everything. A later
procrastinate release is adopted by a migration that applies its own migration files
(procrastinate/sql/migrations) for the versions in between; pyproject.toml pins 3.10.
"""

from __future__ import annotations

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Run through the driver's parameter parser, which reads a lone % as a placeholder.
    op.get_bind().exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))


def downgrade() -> None:
    op.execute(
        "DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, "
        "procrastinate_jobs, procrastinate_workers CASCADE"
    )
    op.execute("DROP TYPE IF EXISTS procrastinate_job_status, procrastinate_job_event_type")
