"""The scheduler's database schema (SQLAlchemy Core; sqlite or PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

bundles = sa.Table(
    "pilot_bundles",
    metadata,
    sa.Column("bundle_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False, index=True),
    sa.Column("path", sa.Text, nullable=False),  # absolute URI of the bundle file
    sa.Column("state", sa.String(16), nullable=False, index=True),  # queued running done failed cancelled
    sa.Column("n_quanta", sa.Integer, nullable=False),
    sa.Column("cores", sa.Integer, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=True),
    sa.Column("disk_mb", sa.Integer, nullable=True),  # added later: QueueStore adds it to older databases
    sa.Column("est_seconds", sa.Float, nullable=False),
    sa.Column("root", sa.String(128), nullable=False),  # the original bundle of a remainder chain
    sa.Column("generation", sa.Integer, nullable=False),  # 0 original, n the n-th remainder
    sa.Column("attempts", sa.Integer, nullable=False),  # failed attempts of this chain so far
    sa.Column("lease_id", sa.String(64), nullable=True),
    sa.Column("remainder", sa.String(128), nullable=True),
    sa.Column("staged", sa.Boolean, nullable=False),
    sa.Column("ingest", sa.String(16), nullable=False),  # none pending done failed
    sa.Column("finished_at", sa.Float, nullable=True),
    # Added later (QueueStore adds them to older databases): the workflow and job label of a
    # bundle submitted over the protocol, and the exit code of its last report.
    sa.Column("workflow_id", sa.String(128), nullable=True, index=True),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("failed_quanta", sa.Integer, nullable=True),
)

# Workflows submitted over the protocol (``POST /v1/workflows``, e.g. by the BPS plugin).
workflows = sa.Table(
    "pilot_workflows",
    metadata,
    sa.Column("workflow_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("run", sa.Text, nullable=False),
    sa.Column("cancelled", sa.Boolean, nullable=False),
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Column("info", sa.Text, nullable=False),  # submit_path, operator, project, campaign, payload, excluded
)

# Edges "bundle_id waits for dep_id".  A remainder of dep_id inherits dep_id's edges, so
# readiness and the upstream list handed to a pilot follow re-queued quanta.
deps = sa.Table(
    "pilot_deps",
    metadata,
    sa.Column("bundle_id", sa.String(128), primary_key=True),
    sa.Column("dep_id", sa.String(128), primary_key=True, index=True),
)

leases = sa.Table(
    "pilot_leases",
    metadata,
    sa.Column("lease_id", sa.String(64), primary_key=True),
    sa.Column("bundle_id", sa.String(128), nullable=False, index=True),
    sa.Column("pilot_id", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),  # active expired finished
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("progress", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),  # the FinishResponse, replayed on a repeat
    # Added later: the pilot's key for the claim that made this lease; a retried claim
    # (its answer was lost) with the same key gets this lease back instead of a second bundle.
    sa.Column("claim_key", sa.String(128), nullable=True),
)

pilots = sa.Table(
    "pilot_pilots",
    metadata,
    sa.Column("pilot_id", sa.String(200), primary_key=True),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("last_heartbeat", sa.Float, nullable=True),
    sa.Column("lease_id", sa.String(64), nullable=True),
)

# Indexes added later (`QueueStore` creates them in older databases too).
INDEXES = (
    # The claim query walks queued bundles in queue order: an index range, not a scan of
    # every finished bundle.
    sa.Index("pilot_bundles_state_seq", bundles.c.state, bundles.c.seq),
    sa.Index("pilot_bundles_ingest", bundles.c.ingest),
    sa.Index("pilot_pilots_lease", pilots.c.lease_id),  # a finished lease frees its pilot
    # One lease per claim key and pilot, also when two replicas see the same retried claim at once.
    sa.Index("pilot_leases_claim_key", leases.c.pilot_id, leases.c.claim_key, unique=True),
)
