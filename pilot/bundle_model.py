"""The bundle document: the unit of work a scheduler hands to a pilot.

A bundle names a quantum graph file, the IDs of the quanta to run from it, where the
Data BackBone (DBB) is, and how to execute and stage.  It never carries a database
URL: a job reaches the DBB only through its datastore.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Literal

import pydantic
from lsst.resources import ResourcePath

from .errors import BundleError, ConfigError, shown

SCHEMA_VERSION: Literal[1] = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "bundle.schema.json"


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class TokenRef(_Strict):
    """Where the job finds the bearer token for the DBB's storage: a reference, never the token."""

    env: str | None = pydantic.Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding it."
    )
    file: str | None = pydantic.Field(default=None, description="Path of a file holding it.")

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> TokenRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' and 'file'")
        return self


_DATABASE_SCHEMES = ("postgresql", "postgres", "sqlite", "mysql", "oracle")


class DBBSpec(_Strict):
    """Where the Data BackBone is."""

    repo: str = pydantic.Field(description="URI of the DBB butler repository root (its butler.yaml).")
    output_run: str = pydantic.Field(min_length=1, description="RUN collection the outputs belong to.")
    staging: str | None = pydantic.Field(
        default=None,
        description="URI of the DBB staging area for committed bundles; default <repo>/pilot-staging.",
    )
    token: TokenRef | None = pydantic.Field(
        default=None, description="Bearer token for the DBB's storage (HTTPS), by reference."
    )

    @pydantic.field_validator("repo", "staging")
    @classmethod
    def _no_database_url(cls, value: str | None) -> str | None:
        if value is not None and value.split(":", 1)[0].split("+", 1)[0].lower() in _DATABASE_SCHEMES:
            raise ValueError("a bundle must not carry a database URL; give the repository's root URI")
        return value


class ExecutionSpec(_Strict):
    """How to execute the bundle's quanta."""

    activator: str = pydantic.Field(
        default="in-process",
        description="Activator plugin name for every task label not in activators_by_label.",
    )
    activators_by_label: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="Activator per task label (a bundle may mix them, e.g. one 'exec' step).",
    )
    activator_settings: dict[str, dict[str, Any]] = pydantic.Field(
        default_factory=dict,
        description="Settings per activator name, checked by that activator (e.g. 'exec': its commands).",
    )
    processes: int | None = pydantic.Field(
        default=None,
        ge=0,
        description="Warm worker processes; default the slot's cores; 0 runs in the pilot.",
    )
    memory_per_worker: str | None = pydantic.Field(
        default=None,
        pattern=r"^[0-9]+(\.[0-9]+)?\s*[KMGT]i?B?$",
        description="RSS budget of each worker (e.g. '2GiB'); a quantum exceeding it fails as 'memory'.",
    )
    transient_dataset_types: list[str] = pydantic.Field(
        default_factory=list,
        description="Dataset types handed on in memory and never written (nor staged out).",
    )
    fail_fast: bool = pydantic.Field(default=False, description="Stop at the first failed quantum.")
    quantum_timeout_seconds: float | None = pydantic.Field(
        default=None,
        gt=0,
        description="Wall seconds a quantum may run; over it the quantum fails as pilot.QuantumTimeout "
        "and its worker is replaced. Null: no limit.",
    )
    retries: int = pydantic.Field(
        default=1,
        ge=0,
        description="Times a failed quantum is run again inside the job when its failure may pass: a dead "
        "or hung worker, the memory limit (with a bigger budget), a transient task exception.",
    )
    memory_multiplier: float = pydantic.Field(
        default=2.0,
        ge=1,
        description="A retry after a memory failure gets the worker budget times this per failed attempt "
        "(at most the whole pool's), and fewer workers run meanwhile.",
    )
    retry_exceptions: list[str] = pydantic.Field(
        default_factory=list,
        description="Task exception types (qualified names) retried like "
        "lsst.pipe.base.RepeatableQuantumError, which always is.",
    )
    hang_seconds: float | None = pydantic.Field(
        default=300.0,
        gt=0,
        description="Seconds a worker may make no CPU progress while stopped (SIGSTOP) or stuck in the "
        "kernel before its quantum fails as pilot.QuantumTimeout. Null: no hang detection.",
    )
    raise_on_partial_outputs: bool = pydantic.Field(
        default=True, description="Treat a task's partial outputs as a failure of its quantum."
    )
    local_repo: Literal["qbb", "sqlite"] = pydantic.Field(
        default="qbb",
        description="Butler the quanta run with: 'qbb', a quantum-backed butler handing intermediates on "
        "in memory; 'sqlite', a temporary full Butler repo (SQLite registry) per worker over the same "
        "workspace datastore, for tasks or tools that need one (slower; see README).",
    )


class StagingSpec(_Strict):
    """How to move data between the DBB and the workspace."""

    stage_out: bool = pydantic.Field(default=True, description="Stage outputs to the DBB staging area.")
    verify_checksums: bool = pydantic.Field(
        default=True,
        description="Verify input sizes and blake2b checksums (against the DBB's records where it has them) "
        "and hash every output once, as its worker writes it; the digests go to the provenance record. "
        "False: no hashing at all (provenance keeps sizes and the DBB's own checksums).",
    )
    parallel_transfers: int = pydantic.Field(default=8, ge=1, description="Concurrent file transfers.")
    retry_attempts: int = pydantic.Field(
        default=4, ge=1, description="Tries of each transfer before a transient error is final."
    )
    retry_backoff_seconds: float = pydantic.Field(
        default=2.0, ge=0, description="Wait before the first retry; doubles (with jitter) each time."
    )


class ResourceEstimate(_Strict):
    """What the bundle is expected to need, for a scheduler matching bundles to slots."""

    cores: int = pydantic.Field(default=1, ge=1, description="Cores it runs best on.")
    memory_mb: int | None = pydantic.Field(default=None, ge=0, description="Peak memory of the job.")
    disk_mb: int | None = pydantic.Field(
        default=None,
        ge=0,
        description="Scratch disk the job fills (inputs, outputs and their zip); null = unknown.",
    )
    seconds: float | None = pydantic.Field(
        default=None, ge=0, description="Estimated wall time on ``cores`` cores."
    )


class RetryPolicy(_Strict):
    """How a scheduler retries the bundle's quanta (BPS: numberOfRetries, retryUnlessExit, ...)."""

    max_attempts: int | None = pydantic.Field(
        default=None, ge=1, description="Attempts of each quantum; null = the scheduler's default."
    )
    retry_unless_exit: list[int] = pydantic.Field(
        default_factory=list,
        description="pipetask exit codes after which failed quanta are final, not retried: 1 (a task "
        "raised) matches a report whose quanta failed on their own (pilot exit 10).",
    )
    memory_multiplier: float | None = pydantic.Field(
        default=None,
        gt=1,
        description="After a quantum failed on memory, its retry gets memory budgets times this.",
    )


class Bundle(_Strict):
    """A bundle of quanta: the document ``pilot run`` executes."""

    schema_version: Literal[1] = pydantic.Field(description="Version of this document's schema.")
    bundle_id: str = pydantic.Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Unique, path-safe bundle name."
    )
    qgraph: str = pydantic.Field(
        description="URI of the quantum graph (.qg) holding these quanta; relative to the bundle file."
    )
    quantum_ids: list[uuid.UUID] = pydantic.Field(min_length=1, description="Quanta of this bundle.")
    source_qgraph: str | None = pydantic.Field(
        default=None, description="The full quantum graph this bundle was cut from (provenance only)."
    )
    depends_on: list[str] = pydantic.Field(
        default_factory=list,
        description="Bundles whose outputs this bundle consumes; they must be ingested first.",
    )
    dbb: DBBSpec
    execution: ExecutionSpec = pydantic.Field(default_factory=ExecutionSpec)
    staging: StagingSpec = pydantic.Field(default_factory=StagingSpec)
    resources: ResourceEstimate = pydantic.Field(default_factory=ResourceEstimate)
    retries: RetryPolicy = pydantic.Field(default_factory=RetryPolicy)

    @pydantic.field_validator("quantum_ids")
    @classmethod
    def _unique_ids(cls, value: list[uuid.UUID]) -> list[uuid.UUID]:
        if len(set(value)) != len(value):
            raise ValueError("quantum IDs must be unique")
        return value

    def qgraph_uri(self, bundle_file: ResourcePath | None) -> ResourcePath:
        """Resolve ``qgraph`` (possibly relative) against the bundle file's directory."""
        if bundle_file is not None:
            return ResourcePath(self.qgraph, root=bundle_file.dirname(), forceAbsolute=True)
        return ResourcePath(self.qgraph, forceAbsolute=True)


def load_bundle(path: str | ResourcePath) -> Bundle:
    """Read and validate a bundle file.

    Raises
    ------
    BundleError
        One line naming the file and what is wrong with it.
    """
    uri = ResourcePath(path)
    try:
        text = uri.read()
    except FileNotFoundError:
        raise BundleError(f"bundle file {shown(uri)} does not exist") from None
    except Exception as err:
        raise BundleError(f"cannot read bundle file {shown(uri)}: {err}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"bundle file {shown(uri)} is not valid JSON: {err}") from None
    try:
        return Bundle.model_validate(data)
    except pydantic.ValidationError as err:
        raise BundleError(f"bundle file {shown(uri)} is invalid: {_first_problem(err)}") from None


def load_execution(path: Path) -> ExecutionSpec:
    """Read an ``execution`` section (YAML or JSON) for ``pilot bundle --execution``.

    Raises
    ------
    ConfigError
        One line naming the file and what is wrong with it.
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read execution settings {path}: {err}") from None
    try:
        return ExecutionSpec.model_validate(data or {})
    except pydantic.ValidationError as err:
        raise ConfigError(f"execution settings {path} are invalid: {_first_problem(err)}") from None


def _first_problem(err: pydantic.ValidationError) -> str:
    problems = []
    for item in err.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<document>"
        match item["type"]:
            case "missing":
                problems.append(f"missing field '{where}'")
            case "extra_forbidden":
                problems.append(f"unknown field '{where}'")
            case _:
                problems.append(f"field '{where}': {item['msg']}")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def write_bundle(bundle: Bundle, path: ResourcePath) -> None:
    """Write a bundle file; it never appears half-written.

    A local file is written under a temporary name (not ``*.json``: ``pilot serve`` queues
    those) and renamed; an object-store PUT is whole by itself.
    """
    data = bundle.model_dump_json(indent=2).encode() + b"\n"
    if not path.isLocal:
        path.write(data, overwrite=True)
        return
    target = Path(path.ospath)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def json_schema() -> str:
    """Return the bundle JSON Schema as shipped in ``pilot/schemas/bundle.schema.json``."""
    schema = Bundle.model_json_schema()
    schema["$id"] = f"https://quanta-pilot/schemas/bundle-v{SCHEMA_VERSION}.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    SCHEMA_PATH.write_text(json_schema())
    print(f"wrote {SCHEMA_PATH}")
