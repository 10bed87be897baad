"""Run each quantum in a child process inside a container runtime (bwrap, podman, docker, apptainer).

The child is this module run as ``python -m activators.container SPEC``: it opens a
quantum-backed butler over the bundle's workspace datastore (bind-mounted) for the one
quantum, runs it with the *inner* activator (``in-process`` by default) and writes the
datastore records of what it wrote to a result file.  The outer activator then adopts
those files as outputs of the bundle's butler, so they are staged and ingested like
any other.

Inputs are read from files: an intermediate that the bundle's butler holds only in
memory (a transient dataset type) is written to the workspace first (not staged out).

Signals and limits: the runtime process gets ``PR_SET_PDEATHSIG`` (``SIGKILL``) and its
own process group, so when the pool kills a worker (time, memory, hang, grace expired)
the container dies with it; an `InterruptedRun` in the pilot's own process (``--processes
0``) is forwarded to the container's process group as ``SIGTERM``, then ``SIGKILL``.

The DBB token is passed by reference only: the name of the variable that `lsst.resources`
reads is passed through to the container (never its value on a command line) and, when
it names a file, that file is bound read-only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lsst.daf.butler import Quantum
from lsst.daf.butler.datastore.record_data import DatastoreRecordData, SerializedDatastoreRecordData
from lsst.pipe.base.pipeline_graph import TaskNode

from pilot.errors import ConfigError

from .base import Activator, ActivatorContext, ActivatorOutcome

RUNTIMES = ("bwrap", "podman", "docker", "apptainer", "singularity")
TOKEN_VARIABLE = "LSST_HTTP_AUTH_BEARER_TOKEN"  # pilot.staging.dbb_token.HTTP_TOKEN_VARIABLE
_PASSED_VARIABLES = ("PYTHONPATH", TOKEN_VARIABLE, "PILOT_PROFILE_DIR", "DAF_BUTLER_CACHE_DIRECTORY")
_KILL_WAIT = 5.0
_PR_SET_PDEATHSIG = 1


class ContainerRuntimeError(RuntimeError):
    """The container runtime failed before the quantum could report how it ended."""


class ContainedQuantumError(RuntimeError):
    """The quantum raised inside the container (the message names the exception type)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.EXIT_CODE = exit_code


class ContainerActivator(Activator):
    """Runs each quantum in a fresh child process inside the bundle's container runtime.

    Settings (``execution.activator_settings["container"]``):

    ``runtime``
        ``bwrap`` (default), ``podman``, ``docker``, ``apptainer`` or ``singularity``.
    ``image``
        Image for podman/docker/apptainer; podman may instead take ``rootfs``.
    ``rootfs``
        Root directory of the container (bwrap: default ``/``, read-only; podman ``--rootfs``).
    ``binds``
        Extra paths bound at the same place (``"path"``, read-write) or ``"src:dst[:ro]"``.
    ``inner``
        Activator run inside (default ``in-process``); ``inner_settings`` are its settings.
    ``python``
        Python inside the container (default: the pilot's own interpreter).
    """

    name: ClassVar[str] = "container"

    def __init__(self, context: ActivatorContext) -> None:
        super().__init__(context)
        settings = dict(context.settings)
        unknown = set(settings) - {"runtime", "image", "rootfs", "binds", "inner", "inner_settings", "python"}
        if unknown:
            raise ConfigError(f"activator 'container': unknown settings {sorted(unknown)}")
        self.runtime = str(settings.get("runtime", "bwrap"))
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"activator 'container': runtime must be one of {RUNTIMES}, not {self.runtime!r}"
            )
        self.image = settings.get("image")
        self.rootfs = settings.get("rootfs")
        if self.runtime in ("docker", "apptainer", "singularity") and not self.image:
            raise ConfigError(f"activator 'container': runtime {self.runtime} needs an 'image'")
        if self.runtime == "podman" and not (self.image or self.rootfs):
            raise ConfigError("activator 'container': podman needs an 'image' or a 'rootfs'")
        self.binds = [str(b) for b in settings.get("binds", [])]
        self.inner = str(settings.get("inner", "in-process"))
        if self.inner == self.name:
            raise ConfigError("activator 'container': inner activator cannot be 'container'")
        self.inner_settings = dict(settings.get("inner_settings", {}))
        self.python = str(settings.get("python", sys.executable))
        if context.workspace is None:
            raise ConfigError("activator 'container' needs the bundle's workspace")
        self.workspace = Path(context.workspace).absolute()
        self.dir = self.workspace / "container"
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- outside the container ---------------------------------------------------

    def execute(self, task_node: TaskNode, quantum: Quantum, quantum_id: uuid.UUID) -> ActivatorOutcome:
        butler: Any = self.context.butler
        qg_uri, local_repo = self.context.qgraph_uri, self.context.local_repo
        if qg_uri is None or local_repo is None:
            raise ConfigError("activator 'container' needs the bundle's graph and local repo in its context")
        inputs = [ref for refs in quantum.inputs.values() for ref in refs] + list(quantum.initInputs.values())
        materialized = butler.persist_held(inputs)
        try:
            return self._run_contained(butler, quantum, quantum_id, inputs, qg_uri, local_repo)
        finally:
            butler.unstore(materialized)

    def _run_contained(
        self,
        butler: Any,
        quantum: Quantum,
        quantum_id: uuid.UUID,
        inputs: list[Any],
        qg_uri: str,
        local_repo: str,
    ) -> ActivatorOutcome:
        records = butler.export_records(inputs)
        stem = self.dir / str(quantum_id)
        result_path = stem.with_suffix(".result.json")
        result_path.unlink(missing_ok=True)
        spec = {
            "qgraph_uri": qg_uri,
            "quantum_id": str(quantum_id),
            "local_repo": local_repo,
            "transient": sorted(self.context.transient),
            "inner": self.inner,
            "inner_settings": self.inner_settings,
            "workspace": str(self.workspace),
            "raise_on_partial_outputs": self.context.raise_on_partial_outputs,
            "fresh_workspace": self.context.fresh_workspace,
            "records": {name: data.to_simple().model_dump(mode="json") for name, data in records.items()},
            "result": str(result_path),
        }
        spec_path = stem.with_suffix(".spec.json")
        spec_path.write_text(json.dumps(spec))
        command = self.command(spec_path, ro_paths=[_local_path(qg_uri)])
        with open(stem.with_suffix(".log"), "wb") as log:
            returncode = run_contained(command, log)
        if not result_path.exists():
            tail = stem.with_suffix(".log").read_text(errors="replace")[-2000:]
            raise ContainerRuntimeError(
                f"{self.runtime} exited with {returncode} and no result for quantum {quantum_id}: {tail}"
            )
        result = json.loads(result_path.read_text())
        if "error" in result:
            error = result["error"]
            raise ContainedQuantumError(
                f"{error['type']}: {error['message']}", int(error.get("exit_code", 1))
            )
        new = {
            name: DatastoreRecordData.from_simple(
                SerializedDatastoreRecordData.model_validate(simple), universe=butler.dimensions
            )
            for name, simple in result["records"].items()
        }
        written = {dataset_id for data in new.values() for dataset_id in data.records}
        outputs = [ref for refs in quantum.outputs.values() for ref in refs if ref.id in written]
        butler.adopt_outputs(outputs, new)
        return ActivatorOutcome(no_work=result["no_work"], already_done=result["already_done"])

    def command(self, spec_path: Path, ro_paths: Sequence[Path | None] = ()) -> list[str]:
        """The runtime's command line that runs the quantum of ``spec_path`` (no secret on it)."""
        rw = [(str(self.workspace), str(self.workspace), False)]
        ro = [(str(p), str(p), True) for p in ro_paths if p is not None]
        cache = self.workspace.parent / "input-cache"  # pilot.workspace.input_cache_root
        if cache.is_dir():
            ro.append((str(cache), str(cache), True))
        token = os.environ.get(TOKEN_VARIABLE, "")
        if token.startswith("/") and os.path.isfile(token):
            ro.append((token, token, True))
        if self.runtime == "bwrap" and (self.rootfs or "/") == "/":
            # The host's own root is bound read-only, but /tmp is a fresh tmpfs: bind back what
            # the child needs from the host, which may live under /tmp (a CI checkout and its venv).
            ro += [(p, p, True) for p in _interpreter_paths()]
        binds = rw + ro + [_parse_bind(b) for b in self.binds]
        inner = [self.python, "-m", "activators.container", str(spec_path)]
        passed = [name for name in _PASSED_VARIABLES if name in os.environ]
        if self.runtime == "bwrap":
            cmd = ["bwrap", "--ro-bind", self.rootfs or "/", "/", "--dev", "/dev", "--proc", "/proc"]
            cmd += ["--tmpfs", "/tmp", "--unshare-pid", "--unshare-ipc", "--die-with-parent"]
            for src, dst, read_only in binds:
                cmd += ["--ro-bind" if read_only else "--bind", src, dst]
            # bwrap keeps the environment: the token variable reaches the child by inheritance.
            return [*cmd, "--", *inner]
        if self.runtime in ("podman", "docker"):
            cmd = [self.runtime, "run", "--rm", "-i", "--network", "none", "--ulimit", "host"]
            cmd += ["--user", f"{os.getuid()}:{os.getgid()}"] if self.runtime == "docker" else []
            for src, dst, read_only in binds:
                cmd += ["-v", f"{src}:{dst}" + (":ro" if read_only else "")]
            for name in passed:
                cmd += ["--env", name]  # the name only: the value comes from this environment
            if self.runtime == "podman" and self.rootfs:
                return [*cmd, "--rootfs", str(self.rootfs), *inner]
            return [*cmd, str(self.image), *inner]
        cmd = [self.runtime, "exec", "--containall", "--pid"]
        for src, dst, read_only in binds:
            cmd += ["--bind", f"{src}:{dst}" + (":ro" if read_only else "")]
        for name in passed:
            cmd += ["--env", f"{name}=${name}"]  # expanded by apptainer, not put on the line
        return [*cmd, str(self.image), *inner]


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return Path(uri) if uri.startswith("/") else None


def _interpreter_paths() -> list[str]:
    """The interpreter's environment, this checkout and ``PYTHONPATH``: what the child imports from."""
    checkout = Path(__file__).resolve().parents[1]
    candidates = [
        sys.prefix,
        sys.base_prefix,
        str(checkout),
        *os.environ.get("PYTHONPATH", "").split(os.pathsep),
    ]
    return list(dict.fromkeys(str(Path(p).resolve()) for p in candidates if p and Path(p).exists()))


def _parse_bind(bind: str) -> tuple[str, str, bool]:
    parts = bind.split(":")
    read_only = parts[-1] == "ro" and len(parts) > 1
    if read_only:
        parts = parts[:-1]
    src = parts[0]
    dst = parts[1] if len(parts) > 1 else src
    return src, dst, read_only


def _child_setup() -> None:
    """In the runtime's process, before exec: die with the worker, take signals' default actions."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The worker ignores SIGTERM/SIGINT (the pilot decides); a forwarded signal must stop the child.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_contained(command: Sequence[str], log: Any) -> int:
    """Run ``command`` in its own process group tied to this process; forward interruptions to it."""
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_child_setup,  # prctl and signal() only
    )
    try:
        return process.wait()
    except BaseException:
        # InterruptedRun (grace expired) or KeyboardInterrupt: stop the container, then re-raise.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(_KILL_WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        raise


# -- inside the container ---------------------------------------------------------


def run_spec(spec: Mapping[str, Any]) -> int:
    """Run the one quantum ``spec`` names; write its result file.  Returns the exit code."""
    from lsst.resources import ResourcePath

    from pilot.executor.chaining_butler import ChainingButler
    from pilot.qgraph_io import load_bundle_graph
    from pilot.workspace import workspace_butler

    from .registry import activator_class

    quantum_id = uuid.UUID(spec["quantum_id"])
    qg = load_bundle_graph(ResourcePath(spec["qgraph_uri"]), (quantum_id,))
    quantum = qg.build_execution_quanta((quantum_id,))[quantum_id]
    universe = qg.pipeline_graph.universe
    records = {
        name: DatastoreRecordData.from_simple(
            SerializedDatastoreRecordData.model_validate(s), universe=universe
        )
        for name, s in spec["records"].items()
    }
    qbb = workspace_butler(
        qg,
        spec["local_repo"],
        inputs=[ref.id for refs in quantum.inputs.values() for ref in refs]
        + [ref.id for ref in quantum.initInputs.values()],
        outputs=[ref.id for refs in quantum.outputs.values() for ref in refs],
        records=records,
    )
    butler = ChainingButler(qbb, {}, spec["transient"], hash_outputs=False)
    sandbox = {
        "pid": os.getpid(),
        "pid_namespace": os.readlink("/proc/self/ns/pid"),
        "mount_namespace": os.readlink("/proc/self/ns/mnt"),
    }
    result: dict[str, Any] = {"sandbox": sandbox}
    code = 0
    try:
        activator = activator_class(spec["inner"])(
            ActivatorContext(
                butler=butler,
                raise_on_partial_outputs=spec["raise_on_partial_outputs"],
                fresh_workspace=spec["fresh_workspace"],
                settings=spec["inner_settings"],
                workspace=spec["workspace"],
            )
        )
        task_node = qg.pipeline_graph.tasks[qg.quantum_only_xgraph.nodes[quantum_id]["task_label"]]
        outcome = activator.execute(task_node, quantum, quantum_id)
        activator.close()
    except Exception as err:
        code = int(getattr(err, "EXIT_CODE", 1))
        result["error"] = {
            "type": f"{type(err).__module__}.{type(err).__qualname__}",
            "message": str(err),
            "exit_code": code,
        }
    else:
        result["no_work"] = outcome.no_work
        result["already_done"] = outcome.already_done
    new = butler.persisted_records()
    result["records"] = {name: data.to_simple().model_dump(mode="json") for name, data in new.items()}
    butler.close()
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(spec["result"])
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m activators.container SPEC.json", file=sys.stderr)
        return 2
    return run_spec(json.loads(Path(args[0]).read_text()))


if __name__ == "__main__":
    sys.exit(main())
