"""Run an external command per quantum (a legacy executable standing in for a task).

The task label keeps a PipelineTask in the graph for its connections (dataset types,
dimensions, storage classes); the ``exec`` activator never calls it.  Per quantum it

1. renders the label's ``argv`` template (``execution.activator_settings["exec"]``) with the
   local file of each input, a path under the quantum's scratch directory for each
   output, the data ID, the workspace, cores and memory;
2. runs the command (no shell) in that scratch directory, its stdout and stderr going to
   files; the command dies with its worker (``PR_SET_PDEATHSIG``), so the pool's memory
   watchdog and time limit, which watch the worker's process tree, cover it;
3. moves each declared output file into the workspace datastore as the output's dataset
   (with the dataset type's formatter, or the one the settings name), so stage-out and
   ingest treat it like any task output;
4. writes the command's stdout/stderr as the quantum's ``<label>_log`` and its exit code and
   resource use as ``<label>_metadata`` (under ``exec``).  A non-zero exit, or a declared
   output the command did not write, fails the quantum (its log is still written).

Inputs must be file-backed: an intermediate of the bundle is read from the file its
producer's ``put`` wrote, so an exec step cannot read a transient dataset type, nor
write one.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]  # str.format's own field-name parser
import ctypes
import dataclasses
import datetime
import functools
import logging
import os
import shutil
import signal
import string
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pydantic
from lsst.daf.butler import DatasetRef, Quantum
from lsst.daf.butler.logging import ButlerLogRecords
from lsst.pipe.base import TaskMetadata
from lsst.pipe.base._status import ExceptionInfo
from lsst.pipe.base.pipeline_graph import TaskNode
from lsst.utils import doImportType
from lsst.utils.introspection import get_full_type_name

from .base import Activator, ActivatorContext, ActivatorOutcome

PLACEHOLDERS = {
    "input": "local file of the input dataset of that type (e.g. {input[raw]})",
    "output": "file the command must write for the output dataset of that type (e.g. {output[calexp]})",
    "data_id": "value of a data ID key (e.g. {data_id[detector]:03d})",
    "workspace": "the bundle's workspace directory",
    "scratch": "the quantum's own scratch directory (the command's working directory)",
    "cores": "the command's cores setting",
    "memory_mib": "the command's memory_mib setting",
    "label": "the task label",
    "quantum_id": "the quantum's UUID",
}
"""Placeholders of an ``argv`` template; the first three need a ``[key]``."""

_KEYED = frozenset({"input", "output", "data_id"})
_FORMATTER = string.Formatter()
_PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_LOG = logging.getLogger(__name__)


class ExecSettingsError(ValueError):
    """The ``exec`` activator's settings, or a template rendered for a quantum, are not usable."""


class ExecCommandFailed(RuntimeError):
    """The command exited non-zero, or did not write a declared output."""


class CommandSpec(pydantic.BaseModel, extra="forbid"):
    """How to run one task label's quanta."""

    argv: list[str] = pydantic.Field(min_length=1, description="Program and arguments, with placeholders.")
    env: dict[str, str] = pydantic.Field(
        default_factory=dict, description="Added to the pilot's environment."
    )
    cores: int = pydantic.Field(default=1, ge=1, description="Value of {cores} (a worker runs one quantum).")
    memory_mib: int | None = pydantic.Field(default=None, ge=1, description="Value of {memory_mib}.")
    formatters: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="Formatter (qualified class name) per output dataset type the command writes in a "
        "format other than the dataset type's configured one.",
    )
    check_outputs: bool = pydantic.Field(
        default=True, description="Read each output back with its formatter before accepting it."
    )

    @pydantic.field_validator("argv")
    @classmethod
    def _check_placeholders(cls, argv: list[str]) -> list[str]:
        for item in argv:
            for field in _fields(item):
                _check_field(field, item)
        return argv

    @pydantic.field_validator("formatters")
    @classmethod
    def _check_formatters(cls, formatters: dict[str, str]) -> dict[str, str]:
        for name in formatters.values():
            try:
                doImportType(name)
            except Exception as err:
                raise ValueError(f"formatter {name!r} cannot be imported: {err}") from None
        return formatters


class ExecSettings(pydantic.BaseModel, extra="forbid"):
    """``execution.activator_settings["exec"]``."""

    commands: dict[str, CommandSpec] = pydantic.Field(description="Command per task label.")


def check_settings(settings: Mapping[str, Any]) -> ExecSettings:
    """Validate ``exec`` settings; raise `ExecSettingsError` with every problem on one line each."""
    try:
        return ExecSettings.model_validate(settings)
    except pydantic.ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
        )
        raise ExecSettingsError(f"exec activator settings: {problems}") from None


def _fields(item: str) -> list[tuple[str, str, str | None]]:
    """``(field name, format spec, conversion)`` of each placeholder in ``item``."""
    try:
        parsed = list(_FORMATTER.parse(item))
    except ValueError as err:
        raise ValueError(f"bad template {item!r}: {err}") from None
    return [(field, spec or "", conv) for _, field, spec, conv in parsed if field is not None]


def _split(field: str, item: str) -> tuple[str, list[object]]:
    if not field:
        raise ValueError(f"bad template {item!r}: an empty placeholder {{}}")
    first, rest = _string.formatter_field_name_split(field)
    return str(first), [key for _, key in rest]


def _check_field(field: tuple[str, str, str | None], item: str) -> None:
    root, keys = _split(field[0], item)
    if root not in PLACEHOLDERS:
        raise ValueError(
            f"bad template {item!r}: unknown placeholder {{{field[0]}}}; known: {', '.join(PLACEHOLDERS)}"
        )
    if (root in _KEYED) != (len(keys) == 1) or len(keys) > 1:
        shape = f"{{{root}[NAME]}}" if root in _KEYED else f"{{{root}}}"
        raise ValueError(f"bad template {item!r}: write {{{field[0]}}} as {shape}")


def render(argv: Sequence[str], values: Mapping[str, Any], label: str) -> list[str]:
    """The command line for one quantum.

    An argument that is a lone ``{input[T]}`` or ``{output[T]}`` becomes one argument per
    dataset of type ``T``; inside other text such a placeholder must name a single dataset.
    """
    rendered: list[str] = []
    for item in argv:
        fields = _fields(item)
        if len(fields) == 1 and item == f"{{{fields[0][0]}}}":
            value = _lookup(fields[0][0], values, item, label)
            rendered.extend(map(str, value) if isinstance(value, list) else [str(value)])
            continue
        out = []
        for literal, field, spec, conversion in _FORMATTER.parse(item):
            out.append(literal)
            if field is None:
                continue
            value = _lookup(field, values, item, label)
            if isinstance(value, list):
                if len(value) != 1:
                    raise ExecSettingsError(
                        f"exec command of {label!r}: {item!r}: {{{field}}} names {len(value)} datasets; "
                        "give it an argument of its own to pass them all"
                    )
                value = value[0]
            value = _FORMATTER.convert_field(value, conversion) if conversion else value
            out.append(format(value, spec or ""))
        rendered.append("".join(out))
    return rendered


def _lookup(field: str, values: Mapping[str, Any], item: str, label: str) -> Any:
    root, keys = _split(field, item)
    value = values[root]
    for key in keys:
        if key not in value:
            known = ", ".join(map(str, value)) or "none"
            raise ExecSettingsError(
                f"exec command of {label!r}: {item!r}: {key!r} is not among the quantum's {root} ({known})"
            )
        value = value[key]
    return value


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: die with the worker, and take SIGINT/SIGTERM (the worker ignores them).

    Only what is safe between fork and exec: ``prctl`` was looked up beforehand.
    """
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before prctl
        os._exit(137)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class ExecActivator(Activator):
    """Runs each quantum's command from ``activator_settings["exec"]["commands"][label]``."""

    name: ClassVar[str] = "exec"

    def __init__(self, context: ActivatorContext) -> None:
        super().__init__(context)
        self.settings = check_settings(context.settings)
        root = Path(context.workspace) if context.workspace else Path(tempfile.mkdtemp(prefix="pilot-exec-"))
        self._scratch_root = root / "exec"

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], labels: frozenset[str]) -> None:
        missing = sorted(labels - set(check_settings(settings).commands))
        if missing:
            raise ExecSettingsError(
                f"exec activator settings: commands has no command for task {missing[0]!r}, which it runs"
            )

    def execute(self, task_node: TaskNode, quantum: Quantum, quantum_id: uuid.UUID) -> ActivatorOutcome:
        label = task_node.label
        command = self.settings.commands.get(label)
        if command is None:
            raise ExecSettingsError(
                f"task {label!r} is run by the exec activator but activator_settings.exec.commands has "
                f"no command for it (it has: {', '.join(self.settings.commands) or 'none'})"
            )
        butler = self._butler()
        outputs = {
            dataset_type.name: refs
            for dataset_type, refs in quantum.outputs.items()
            if dataset_type.name
            not in (
                task_node.log_output and task_node.log_output.dataset_type_name,
                task_node.metadata_output.dataset_type_name,
            )
        }
        all_outputs = [ref for refs in quantum.outputs.values() for ref in refs]
        if not self.context.fresh_workspace:
            stored = butler.stored_many(all_outputs)
            if all(stored.values()):
                return ActivatorOutcome(already_done=True)
            if any(stored.values()):
                butler.pruneDatasets([r for r, s in stored.items() if s], unstore=True, purge=True)
        scratch = self._scratch_root / label / str(quantum_id)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        output_files = self._output_files(command, outputs, scratch)
        values = self._values(command, quantum, quantum_id, label, scratch, output_files)
        argv = render(command.argv, values, label)
        prepared = _utc_now()
        run = _run(argv, command, scratch)
        log_lines = [f"exec: {' '.join(argv)}", *run.lines, f"exec: exit code {run.exit_code}"]
        metadata = run.metadata(argv, prepared)
        try:
            if run.exit_code != 0:
                raise ExecCommandFailed(
                    f"exec command of {label!r} {_exit_text(run.exit_code)}: {argv[0]}"
                    + (f" (last stderr line: {run.last_stderr})" if run.last_stderr else "")
                )
            self._ingest(label, command, output_files)
        except Exception as err:
            self._write_log(task_node, quantum, log_lines, failure=(err, metadata))
            raise
        self._write_log(task_node, quantum, log_lines, failure=None)
        [metadata_ref] = quantum.outputs[task_node.metadata_output.dataset_type_name]
        butler.put(metadata, metadata_ref)
        shutil.rmtree(scratch, ignore_errors=True)
        return ActivatorOutcome()

    def _butler(self) -> Any:
        """The bundle's `ChainingButler` (the exec activator needs its file-level methods)."""
        butler = self.context.butler
        if not hasattr(butler, "local_file"):
            raise TypeError(
                f"the exec activator needs the pilot's ChainingButler, not {type(butler).__name__}"
            )
        return butler

    def _output_files(
        self, command: CommandSpec, outputs: Mapping[str, Sequence[DatasetRef]], scratch: Path
    ) -> dict[str, list[tuple[DatasetRef, Path, type | None]]]:
        """Where the command writes each output (the extension its formatter expects)."""
        unknown = sorted(set(command.formatters) - set(outputs))
        if unknown:
            raise ExecSettingsError(
                f"exec formatters name {unknown[0]!r}, which is not an output of the quantum"
            )
        files: dict[str, list[tuple[DatasetRef, Path, type | None]]] = {}
        for name, refs in outputs.items():
            override = doImportType(command.formatters[name]) if name in command.formatters else None
            for index, ref in enumerate(refs):
                formatter = override or self._butler().formatter_class(ref)
                suffix = getattr(formatter, "default_extension", None) or ""
                stem = name if len(refs) == 1 else f"{name}_{index}"
                files.setdefault(name, []).append((ref, scratch / f"{stem}{suffix}", override))
        return files

    def _values(
        self,
        command: CommandSpec,
        quantum: Quantum,
        quantum_id: uuid.UUID,
        label: str,
        scratch: Path,
        output_files: Mapping[str, list[tuple[DatasetRef, Path, type | None]]],
    ) -> dict[str, Any]:
        butler = self._butler()
        inputs: dict[str, list[str]] = {}
        for dataset_type, refs in quantum.inputs.items():
            name = dataset_type.name
            for ref in refs:
                try:
                    inputs.setdefault(name, []).append(str(butler.local_file(ref)))
                except FileNotFoundError as err:
                    raise ExecSettingsError(f"exec command of {label!r}: input {name}: {err}") from None
        data_id = quantum.dataId
        assert data_id is not None
        return {
            "input": inputs,
            "output": {name: [str(path) for _, path, _ in files] for name, files in output_files.items()},
            "data_id": dict(data_id.mapping if data_id.hasFull() else data_id.required),
            "workspace": str(self.context.workspace or self._scratch_root.parent),
            "scratch": str(scratch),
            "cores": command.cores,
            "memory_mib": "" if command.memory_mib is None else command.memory_mib,
            "label": label,
            "quantum_id": str(quantum_id),
        }

    def _ingest(
        self,
        label: str,
        command: CommandSpec,
        output_files: Mapping[str, list[tuple[DatasetRef, Path, type | None]]],
    ) -> None:
        butler = self._butler()
        missing = [
            f"{name} ({path})"
            for name, files in output_files.items()
            for _, path, _ in files
            if not path.is_file()
        ]
        if missing:
            raise ExecCommandFailed(
                f"exec command of {label!r} exited 0 but did not write {', '.join(missing)}"
            )
        for name, files in output_files.items():
            for ref, path, formatter in files:
                butler.ingest_file(path, ref, formatter)
                if not command.check_outputs:
                    continue
                try:
                    butler.read_stored(ref)
                except Exception as err:
                    butler.pruneDatasets([ref], unstore=True, purge=True)
                    raise ExecCommandFailed(
                        f"exec command of {label!r} wrote {name} that cannot be read as "
                        f"{ref.datasetType.storageClass_name}: {type(err).__name__}: {err}"
                    ) from None

    def _write_log(
        self,
        task_node: TaskNode,
        quantum: Quantum,
        lines: list[str],
        *,
        failure: tuple[Exception, TaskMetadata] | None,
    ) -> None:
        """Write the quantum's log; a failure's exception and metadata go in its ``extra``, as pipe_base's."""
        if task_node.log_output is None:
            return
        [log_ref] = quantum.outputs[task_node.log_output.dataset_type_name]
        records = ButlerLogRecords.from_records([])
        for index, line in enumerate(lines):
            level = logging.ERROR if failure and index == len(lines) - 1 else logging.INFO
            records.append(
                logging.LogRecord(
                    f"exec.{task_node.label}", level, __file__, 0, "%s", (line,), None, "execute"
                )
            )
        if failure is not None:
            err, metadata = failure
            exception = ExceptionInfo(type_name=get_full_type_name(err), message=str(err), metadata={})
            # What pipe_base's log capture stores for provenance (the private _ExecutionLogRecordsExtra).
            records.extra = {"exception": exception.model_dump(), "metadata": metadata.model_dump()}
        self.context.butler.put(records, log_ref)


@dataclasses.dataclass(frozen=True)
class _Run:
    """A finished command: exit code, output lines, resource use (`os.wait4`'s, the command's own)."""

    exit_code: int
    lines: list[str]
    last_stderr: str
    started: str
    ended: str
    wall: float
    usage: Any

    def metadata(self, argv: list[str], prepared: str) -> TaskMetadata:
        """The quantum's metadata: ``exec`` and a ``quantum`` section as pipe_base's, for provenance."""
        cpu = self.usage.ru_utime + self.usage.ru_stime
        rss = self.usage.ru_maxrss * 1024
        metadata = TaskMetadata()
        metadata["quantum"] = {
            "prepUtc": prepared,
            "initUtc": self.started,
            "startUtc": self.started,
            "endUtc": self.ended,
            "startCpuTime": 0.0,
            "endCpuTime": cpu,
            "endMaxResidentSetSize": rss,
        }
        metadata["exec"] = {
            "argv": argv,
            "exit_code": self.exit_code,
            "wall_seconds": self.wall,
            "user_cpu_seconds": self.usage.ru_utime,
            "system_cpu_seconds": self.usage.ru_stime,
            "max_rss_bytes": rss,
        }
        return metadata


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _run(argv: list[str], command: CommandSpec, scratch: Path) -> _Run:
    """Run the command in ``scratch``; wait for it with ``wait4`` for its own resource use."""
    stdout_path, stderr_path = scratch / ".exec.stdout", scratch / ".exec.stderr"
    started, start = _utc_now(), time.perf_counter()
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        try:
            process = subprocess.Popen(
                argv,
                cwd=scratch,
                env={**os.environ, **command.env},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),  # noqa: PLW1509
                start_new_session=True,  # out of the terminal's group: the pilot decides about signals
            )
        except OSError as err:
            raise ExecCommandFailed(f"exec command {argv[0]!r} cannot be started: {err}") from None
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    out = stdout_path.read_text(errors="replace").splitlines()
    errors = stderr_path.read_text(errors="replace").splitlines()
    lines = [f"stdout: {line}" for line in out] + [f"stderr: {line}" for line in errors]
    return _Run(process.returncode, lines, errors[-1] if errors else "", started, _utc_now(), wall, usage)


def _exit_text(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"
