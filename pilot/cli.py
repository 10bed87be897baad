"""The ``pilot`` command line."""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .errors import PilotError
from .exit_codes import MEANINGS, ExitCode
from .interruption import stop_on_signals
from .log_setup import configure_logging

if TYPE_CHECKING:
    from .bundle_model import ExecutionSpec
    from .central.ingest import BundleIngest
    from .runner import RunOutcome

_LOG = logging.getLogger(__name__)

EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):>3}  {text}" for code, text in MEANINGS.items()
)


def error_line(message: str) -> str:
    """Return ``message`` as the one line ``pilot: error: <message>`` (line breaks folded into spaces)."""
    return "pilot: error: " + " ".join(part.strip() for part in message.splitlines() if part.strip())


class PilotGroup(click.Group):
    """The ``pilot`` command group, and the one place a `PilotError` ends a command.

    A `PilotError` escaping any subcommand is printed as one line on stderr,
    ``pilot: error: <message>``, and the process exits with the error's ``exit_code``.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command line; on the way out, spare the garbage collector the LSST stack.

        At exit CPython runs full collections over every object still alive: with the
        stack imported, ~0.3 s of the process's wall time for nothing (its memory goes
        back to the OS anyway).  `gc.freeze` moves those objects out of the collector's
        sight first; atexit handlers, ``logging`` shutdown and finalizers of objects freed
        by reference count all still run.  Only unreachable cycles left at exit are not
        collected, which CPython never promised to do.
        """
        try:
            return super().main(*args, **kwargs)
        finally:
            gc.freeze()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PilotError as err:
            _LOG.debug("Command ended by %s.", type(err).__name__, exc_info=True)
            click.echo(error_line(str(err) or type(err).__name__), err=True)
            ctx.exit(int(err.exit_code))


# lsst.utils.logging's levels, which BPS passes (``--log-level=VERBOSE``).
_LEVELS = {"TRACE": 5, "DEBUG": 10, "VERBOSE": 15, "INFO": 20, "WARNING": 30, "ERROR": 40}


@click.group(cls=PilotGroup, epilog=EXIT_CODE_HELP)
@click.option(
    "--log-level",
    type=click.Choice(list(_LEVELS), case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="Logging level of the pilot and the LSST stack.",
)
@click.option("--long-log", is_flag=True, help="Accepted for pipetask compatibility (BPS passes it).")
def main(log_level: str, long_log: bool) -> None:
    """quanta-pilot: run bundles of LSST Gen3 quanta in-process and stage them to the DBB."""
    configure_logging(_LEVELS[log_level.upper()])


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("qgraph")
@click.option("--repo", required=True, help="DBB butler repository (written: dataset types, init-outputs).")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory for bundles."
)
@click.option(
    "--max-quanta", type=int, default=None, help="Most quanta per bundle (whole chains kept together)."
)
@click.option("--staging", default=None, help="DBB staging-area URI (default: <repo>/pilot-staging).")
@click.option(
    "--exclude",
    "exclusions",
    metavar="LABEL:EXPRESSION",
    multiple=True,
    help="Leave out the quanta of task LABEL whose data IDs match the butler query EXPRESSION "
    "(e.g. 'calibrate:detector IN (8, 9)'), and everything downstream of them. Repeatable.",
)
@click.option(
    "--execution",
    "execution_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML/JSON file with the bundles' execution section, e.g. activators_by_label and "
    "activator_settings (an 'exec' step's commands); checked by the activators it names.",
)
def bundle(
    qgraph: str,
    repo: str,
    out_dir: Path,
    max_quanta: int | None,
    staging: str | None,
    exclusions: tuple[str, ...],
    execution_file: Path | None,
) -> None:
    """Split quantum graph QGRAPH (.qg) into bundle files, after preparing the DBB once."""
    from activators.registry import check_activator_settings

    from .bundle_model import load_execution
    from .central.bundling import EXCLUDED_FILE, excluded_counts, make_bundles

    try:
        exclude = _parse_exclusions(exclusions)
    except ValueError as err:  # a usage error, on one line
        click.echo(error_line(str(err)), err=True)
        sys.exit(2)
    execution = load_execution(execution_file) if execution_file else None
    if execution is not None:
        check_activator_settings(
            execution.activator, execution.activators_by_label, execution.activator_settings
        )
    paths = make_bundles(
        qgraph, repo, out_dir, max_quanta=max_quanta, staging=staging, exclude=exclude, execution=execution
    )
    for path in paths:
        click.echo(str(path))
    counts = excluded_counts(out_dir) if exclude else {}
    if counts:
        per_label = ", ".join(f"{count} of {label}" for label, count in counts.items())
        click.echo(
            f"excluded {sum(counts.values())} quanta ({per_label}); see {out_dir / EXCLUDED_FILE}", err=True
        )
    click.echo(f"{len(paths)} bundles written to {out_dir}", err=True)


def _parse_exclusions(exclusions: Sequence[str]) -> dict[str, str]:
    """Map ``LABEL:EXPRESSION`` options to ``{label: expression}``; a repeated label ORs its expressions."""
    exclude: dict[str, str] = {}
    for item in exclusions:
        label, colon, expression = item.partition(":")
        if not colon or not label.strip():
            raise ValueError(f"--exclude {item!r} is not LABEL:EXPRESSION (e.g. 'isr:detector IN (8, 9)')")
        label, expression = label.strip(), expression.strip()
        exclude[label] = f"({exclude[label]}) OR ({expression})" if label in exclude else expression
    return exclude


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("bundle_files", metavar="BUNDLE...", nargs=-1, required=True)
@click.option(
    "--workspace",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Work area: one <bundle_id>/ workspace per bundle and the shared input-cache/ "
    "(default: $_CONDOR_SCRATCH_DIR/pilot, else a new temporary directory).",
)
@click.option(
    "--processes",
    type=click.IntRange(0),
    default=None,
    help="Warm worker processes (default: the bundle's setting, else the slot's cores); 0 runs in the pilot.",
)
@click.option(
    "--memory-per-worker",
    default=None,
    help="RSS budget per worker, e.g. 2GiB; a quantum exceeding it fails as 'memory'.",
)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds running quanta get to finish after SIGTERM/SIGINT.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an earlier run in the same --workspace (e.g. after a failed stage-out): "
    "quanta its journal shows succeeded are not run again.",
)
@click.option(
    "--quantum-timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Wall seconds a quantum may run before it fails as pilot.QuantumTimeout (default: the bundle's).",
)
@click.option(
    "--hang-seconds",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Seconds a stopped or stuck worker may make no CPU progress (default: the bundle's, 300).",
)
def run(
    bundle_files: tuple[str, ...],
    workspace: Path | None,
    processes: int | None,
    memory_per_worker: str | None,
    grace: float,
    resume: bool,
    quantum_timeout: float | None,
    hang_seconds: float | None,
) -> None:
    """Execute each BUNDLE locally (no scheduler): stage in, run, stage out, write report.json.

    Bundles run one after another on one pool of warm workers and share one input
    cache.  A bundle that fails before execution gets one error line and the run goes
    on with the next; only a signal stops it early.  The exit code is the highest of
    the bundles' codes.
    """
    from .bundle_model import ExecutionSpec
    from .executor.worker_pool import pool_for
    from .slot import detect_slot

    slot = detect_slot()  # the machine ad's cores and site, in a glidein
    execution = _first_execution(bundle_files)
    if execution is None:  # no bundle loads: each will only print its error, no pool needed
        execution, processes = ExecutionSpec(), 0
    elif processes is None:
        processes = slot.cores if execution.processes is None else execution.processes
    # Start the workers first: their forkserver imports the LSST stack while we do.  Only
    # light modules may be imported above this line: `workspace` and `runner` import the
    # stack (~1 s), which would delay the forkserver's own import by as much.
    pool = pool_for(execution, processes, memory_per_worker)
    limits = {"quantum_timeout_seconds": quantum_timeout, "hang_seconds": hang_seconds}
    overrides = {name: value for name, value in limits.items() if value is not None}
    worst = 0
    try:
        from .monitor.progress import LiveLine, Tracker
        from .runner import run_bundle
        from .workspace import pilot_area

        area = pilot_area(workspace)
        with stop_on_signals(signal.SIGTERM, signal.SIGINT, grace=grace) as stop:
            for path in bundle_files:
                if stop.reason is not None:  # bundles left unrun
                    worst = max(worst, ExitCode.INTERRUPTED)
                    break
                live = LiveLine(Tracker(Path(path).stem, (lambda: pool.running) if pool else (lambda: 0)))
                try:
                    outcome = run_bundle(
                        path,
                        area,
                        pool=pool,
                        stop=stop,
                        resume=resume,
                        site=slot.site,
                        slot_memory_mb=slot.memory_mb,
                        overrides=overrides,
                        on_quantum=live.on_quantum,
                        on_phase=live.on_phase,
                    )
                except PilotError as err:
                    live.close()
                    click.echo(error_line(_naming(path, str(err))), err=True)
                    worst = max(worst, err.exit_code)
                    continue
                live.close()
                _print_outcome(outcome)
                worst = max(worst, outcome.report.exit_code)
    finally:
        if pool is not None:
            pool.close()
    sys.exit(int(worst))


def _first_execution(bundle_files: Sequence[str]) -> ExecutionSpec | None:
    """The execution settings of the first bundle that loads (the pool's size and memory), if any.

    A bundle that does not load is skipped silently here: its error is printed when its turn comes.
    """
    from .bundle_model import load_bundle

    for path in bundle_files:
        try:
            return load_bundle(path).execution
        except PilotError:
            continue
    return None


def _naming(bundle_file: str, message: str) -> str:
    """Return ``message``, followed by ``(bundle file <bundle_file>)`` unless it names that file already."""
    return message if bundle_file in message else f"{message} (bundle file {bundle_file})"


def _print_outcome(outcome: RunOutcome) -> None:
    report = outcome.report
    where = f"{report.processes} workers" if report.processes else "in-process"
    resumed = f", {report.resumed_quanta} resumed from the journal" if report.resumed_quanta else ""
    click.echo(
        f"bundle {report.bundle_id}: {report.status} in {report.wall_seconds:.1f} s ({where}{resumed})"
    )
    click.echo(format_task_table(report.tasks))
    stats = report.stage_in
    click.echo(
        f"stage-in: {stats.files} files fetched ({stats.bytes / 1e6:.1f} MB), {stats.cache_hits} cache hits, "
        f"{stats.retries} retries"
    )
    if report.stage_out is not None:
        click.echo(
            f"staged {report.stage_out.n_datasets} datasets ({report.stage_out.transfer.retries} retries): "
            f"{report.stage_out.manifest}"
        )
    if report.message:
        click.echo(error_line(report.message), err=True)
    click.echo(f"report: {outcome.report_path}")


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("repo")
@click.option("--staging", default=None, help="DBB staging-area URI (default: <repo>/pilot-staging).")
@click.option(
    "--provenance/--no-provenance",
    default=True,
    show_default=True,
    help="Then write the stack's provenance graph of each run whose quanta all ended (pilot provenance).",
)
def ingest(repo: str, staging: str | None, provenance: bool) -> None:
    """Register every committed bundle's outputs in DBB repository REPO (idempotent)."""
    from .central.ingest import ingest_committed

    results = ingest_committed(repo, staging)
    _echo_ingest(results)
    if provenance and results:
        from .central.provenance_graph import update_provenance

        for outcome in update_provenance(repo, staging):
            click.echo(outcome.describe())


@main.command(name="provenance", epilog=EXIT_CODE_HELP)
@click.argument("repo")
@click.argument("runs", nargs=-1)
@click.option("--staging", default=None, help="DBB staging-area URI (default: <repo>/pilot-staging).")
@click.option(
    "--qgraph", default=None, help="The run's predicted graph (default: its bundles' source_qgraph)."
)
@click.option("--force", is_flag=True, help="Rewrite a provenance graph that is up to date.")
def provenance_command(
    repo: str, runs: tuple[str, ...], staging: str | None, qgraph: str | None, force: bool
) -> None:
    """Write the stack's provenance quantum graph of each ingested run (default: all) of DBB REPO.

    The graph goes to <repo>/pilot-provenance/<run>.qg (read it with
    ProvenanceQuantumGraphReader or `butler provenance-report`), the pilot's extras
    per quantum to <run>.pilot-extras.json beside it.  Idempotent.
    """
    from .central.provenance_graph import update_provenance

    outcomes = update_provenance(repo, staging, runs=runs or None, qgraph=qgraph, force=force)
    for outcome in outcomes:
        click.echo(outcome.describe())
    if not outcomes:
        click.echo("no ingested bundles found: no provenance graph to write")


def _echo_ingest(results: list[BundleIngest]) -> None:
    for item in results:
        click.echo(item.describe())
    new = sum(item.new for item in results)
    if not results:
        click.echo("no committed bundles found: nothing to ingest")
    elif new == 0:
        click.echo(f"{len(results)} committed bundles, nothing new: the DBB is unchanged")
    else:
        click.echo(f"ingested {new} datasets from {sum(not i.skipped for i in results)} bundles")


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("bundle_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--repo", required=True, help="DBB butler repository (committed bundles are ingested into it).")
@click.option("--staging", default=None, help="Staging-area URI as seen here (default: each bundle's).")
@click.option(
    "--db", default=None, help="Queue database URL (default: sqlite:///BUNDLE_DIR/scheduler.sqlite3)."
)
@click.option(
    "--token-file", required=True, type=click.Path(path_type=Path), help="File with the bearer token."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8470, show_default=True, help="0: any free port."
)
@click.option(
    "--lease-ttl", type=click.FloatRange(0.1), default=120.0, show_default=True, help="Lease seconds."
)
@click.option(
    "--seconds-per-quantum",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Wall-time estimate per quantum of bundles without resources.seconds.",
)
@click.option(
    "--max-attempts", type=click.IntRange(1), default=3, show_default=True, help="Tries of a quantum."
)
@click.option(
    "--retry-after",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds an idle pilot waits before claiming again.",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Request threads (more only help when the database is far: they contend for the GIL).",
)
def serve(
    bundle_dir: Path,
    repo: str,
    staging: str | None,
    db: str | None,
    token_file: Path,
    host: str,
    port: int,
    lease_ttl: float,
    seconds_per_quantum: float,
    max_attempts: int,
    retry_after: float,
    threads: int,
) -> None:
    """Hand the bundles in BUNDLE_DIR to pilots (protocol v1); ingest what they stage.

    BUNDLE_DIR holds the queue database and remainder bundles; it is created if absent.
    Bundle files in it are queued at start; workflows (e.g. from BPS) come over the protocol.
    """
    from .protocol import read_token
    from .scheduler.server import ServeOptions, serve
    from .scheduler.service import Settings

    token = read_token(token_file)
    options = ServeOptions(bundle_dir, repo, token, db=db, host=host, port=port, threads=threads)
    settings = Settings(lease_ttl, seconds_per_quantum, max_attempts, retry_after, staging=staging)
    serve(options, settings)


@main.command(epilog=EXIT_CODE_HELP)
@click.option(
    "--scheduler",
    "scheduler_url",
    envvar="PILOT_SCHEDULER_URL",
    required=True,
    help="Scheduler base URL (env PILOT_SCHEDULER_URL).",
)
@click.option(
    "--token-file",
    envvar="PILOT_TOKEN_FILE",
    default=None,
    help="File holding the scheduler bearer token (env PILOT_TOKEN_FILE).",
)
@click.option(
    "--workspace",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Work area (default: $_CONDOR_SCRATCH_DIR/pilot, else a new temporary directory).",
)
@click.option(
    "--lifetime",
    type=click.FloatRange(0),
    default=None,
    help="Seconds this pilot may live (default: GLIDEIN_ToDie from the machine ad, else unlimited).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0),
    default=600.0,
    show_default=True,
    help="Exit after this many seconds without work.",
)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds running quanta get to finish when draining.",
)
@click.option(
    "--processes",
    type=click.IntRange(0),
    default=None,
    help="Warm worker processes for every bundle (default: the bundle's setting, else the slot's "
    "cores; never more than the cores); 0 runs quanta in the pilot.",
)
@click.option(
    "--memory-per-worker", default=None, help="RSS budget per worker, e.g. 2GiB (default: the bundle's)."
)
@click.option("--pilot-id", default=None, help="Name reported to the scheduler (default: host-pid-random).")
@click.option("--keep-workspaces", is_flag=True, help="Keep each bundle's workspace after reporting it.")
def start(
    scheduler_url: str,
    token_file: str | None,
    workspace: Path | None,
    lifetime: float | None,
    idle_timeout: float,
    grace: float,
    processes: int | None,
    memory_per_worker: str | None,
    pilot_id: str | None,
    keep_workspaces: bool,
) -> None:
    """Glidein mode: claim bundles from the scheduler, run and report them until drained.

    SIGTERM, SIGINT or SIGUSR1 drain the pilot: no more claims, running quanta get
    --grace seconds, finished work is staged and reported, the rest is released.
    """
    from .bundle_model import ExecutionSpec
    from .executor.worker_pool import pool_for
    from .glidein.client import SchedulerClient, token_from
    from .glidein.loop import DRAIN_SIGNALS, StartOptions, default_pilot_id, start_pilot, start_pool_size
    from .slot import detect_slot
    from .workspace import pilot_area

    with stop_on_signals(*DRAIN_SIGNALS, grace=grace) as stop:
        slot = detect_slot(lifetime)
        client = SchedulerClient(scheduler_url, token_from(token_file))  # no network I/O yet
        area = pilot_area(workspace)
        # Sized again for each bundle (its execution settings, the options win), never over the cores.
        workers = start_pool_size(slot, processes)
        pool = pool_for(ExecutionSpec(), workers, memory_per_worker)
        options = StartOptions(
            area=area,
            pilot_id=pilot_id or default_pilot_id(),
            grace=grace,
            idle_timeout=idle_timeout,
            keep_workspaces=keep_workspaces,
            processes=processes,
            memory_per_worker=memory_per_worker,
        )
        click.echo(
            f"pilot {options.pilot_id}: {slot.cores} cores, {slot.memory_mb} MB ({slot.source}), "
            f"site {slot.site or 'unknown'}, scheduler {scheduler_url}",
            err=True,
        )
        try:
            summary = start_pilot(client, slot, pool, options, stop)
        finally:
            if pool is not None:
                pool.close()
            client.close()
    click.echo(
        f"pilot {options.pilot_id}: {summary.reason}; {summary.bundles} bundles, "
        f"{summary.quanta_succeeded} quanta succeeded, {summary.quanta_failed} failed"
    )
    sys.exit(int(summary.exit_code))


@main.command("report", epilog=EXIT_CODE_HELP)
@click.option(
    "--scheduler",
    "scheduler_url",
    envvar="PILOT_SCHEDULER_URL",
    default=None,
    help="Ask this running scheduler (env PILOT_SCHEDULER_URL).",
)
@click.option(
    "--token-file",
    envvar="PILOT_TOKEN_FILE",
    default=None,
    help="File holding the scheduler bearer token (env PILOT_TOKEN_FILE).",
)
@click.option("--staging", default=None, help="Offline: read the committed reports of this staging area.")
@click.option("--repo", default=None, help="Offline: read <repo>/pilot-staging (the DBB's default area).")
@click.option("--bundles", "show_bundles", is_flag=True, help="Also list each bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (report-response schema).")
def report_command(
    scheduler_url: str | None,
    token_file: str | None,
    staging: str | None,
    repo: str | None,
    show_bundles: bool,
    as_json: bool,
) -> None:
    """The campaign per task label: succeeded, failed, blocked, running, queued; the failed quanta.

    Online from a running scheduler, or offline (--staging or --repo, these win) from the
    committed report.json files of a staging area, which know nothing of queued or running work.
    """
    from .monitor.campaign import format_report

    if staging or repo:
        from .monitor.campaign import from_staging
        from .staging.area import staging_root

        report = from_staging(staging_root(repo or "", staging))
    elif scheduler_url:
        from .glidein.client import SchedulerClient, token_from

        client = SchedulerClient(scheduler_url, token_from(token_file))
        try:
            report = client.campaign_report().model_copy(update={"source": scheduler_url})
        finally:
            client.close()
    else:
        raise click.UsageError("give --scheduler (or PILOT_SCHEDULER_URL), --staging or --repo")
    click.echo(report.model_dump_json(indent=2) if as_json else format_report(report, show_bundles))


@main.command("run-qbb")
@click.argument("butler_config")
@click.argument("qgraph")
@click.option(
    "--qgraph-node-id",
    "node_ids",
    multiple=True,
    help="Quanta to run (comma-separated UUIDs, repeatable), as BPS passes them; default: all.",
)
@click.option("-j", "--processes", type=click.IntRange(1), default=1, show_default=True, help="Workers.")
@click.option("--fail-fast", is_flag=True, help="Stop dispatching at the first failure.")
@click.option("--raise-on-partial-outputs/--no-raise-on-partial-outputs", default=True, show_default=True)
@click.option("--no-existing-outputs", is_flag=True, help="Assume no predicted output exists yet.")
@click.option("--qgraph-id", default=None, hidden=True)
@click.option("--summary", default=None, hidden=True)
@click.option("--enable-implicit-threading", is_flag=True, hidden=True)
@click.option("-n", "--cores-per-quantum", type=int, default=None, hidden=True)
@click.option("--memory-per-quantum", default=None, hidden=True)
def run_qbb(
    butler_config: str,
    qgraph: str,
    node_ids: tuple[str, ...],
    processes: int,
    fail_fast: bool,
    raise_on_partial_outputs: bool,
    no_existing_outputs: bool,
    **ignored: object,
) -> None:
    """Run QGRAPH's quanta into BUTLER_CONFIG's datastore, as ``pipetask run-qbb`` (a BPS job's command).

    Depth-first on warm workers with in-memory handoff; outputs go straight into the
    datastore for BPS's final job to register.  Exit status 0 if every quantum
    succeeded, else 1, as ``pipetask``.  Options ``pipetask run-qbb`` has that do not
    change what runs (``--summary``, ``-n``, ``--memory-per-quantum``, ...) are accepted.
    """
    from .bps.run_qbb import RunQbbOptions, parse_node_ids, run_qbb

    try:
        ids = parse_node_ids(node_ids)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--qgraph-node-id") from None
    options = RunQbbOptions(processes, fail_fast, raise_on_partial_outputs, no_existing_outputs)
    results = run_qbb(butler_config, qgraph, ids, options)
    bad = [r for r in results if r.status != "succeeded"]
    click.echo(f"run-qbb: {len(results) - len(bad)} of {len(results)} quanta succeeded", err=True)
    sys.exit(1 if bad else 0)


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), default=Path("pilot-demo"))
@click.option("--detectors", type=click.IntRange(1, 1000), default=24, show_default=True, help="Data IDs.")
@click.option("--sleep", type=float, default=0.02, show_default=True, help="Seconds each mock task sleeps.")
@click.option(
    "--max-quanta", type=click.IntRange(1), default=12, show_default=True, help="Quanta per bundle."
)
@click.option(
    "--processes", type=click.IntRange(0), default=None, help="Warm workers (default: the slot's cores)."
)
@click.option(
    "--bps", is_flag=True, help="Run it through bps submit (Parsl, loopback) with pilot run-qbb jobs."
)
def demo(
    directory: Path, detectors: int, sleep: float, max_quanta: int, processes: int | None, bps: bool
) -> None:
    """Build a demo DBB and pipeline in DIRECTORY, run every bundle, ingest, and report."""
    from .demo.campaign import run_demo
    from .report import count_statuses
    from .slot import available_cores

    workers = available_cores() if processes is None else processes
    if bps:
        _bps_demo(directory, detectors, sleep, max(workers, 1))
    result = run_demo(directory, n_detectors=detectors, sleep=sleep, max_quanta=max_quanta, processes=workers)
    all_results = [q for outcome in result.runs for q in outcome.report.quanta]
    counts, tasks = count_statuses(all_results)
    click.echo(f"DBB: {directory.absolute() / 'dbb'}   run: {result.output_run}")
    click.echo(f"quantum graph: {result.qgraph}")
    click.echo(f"{len(result.bundles)} bundles, {len(all_results)} quanta")
    for outcome in result.runs:
        r = outcome.report
        click.echo(f"  {r.bundle_id}: {r.status}, {len(r.quanta)} quanta in {r.wall_seconds:.2f} s")
    click.echo(format_task_table(tasks))
    for item in result.ingested:
        click.echo(item.describe())
    click.echo(f"{result.datasets_in_run} datasets registered in {result.output_run}")
    from .central.provenance_graph import update_provenance

    for written in update_provenance(str(directory / "dbb"), runs=[result.output_run]):
        click.echo(written.describe())
    ok = counts["succeeded"] == len(all_results)
    click.echo(
        "every quantum succeeded"
        if ok
        else f"{len(all_results) - counts['succeeded']} quanta did not succeed"
    )
    sys.exit(int(ExitCode.SUCCESS if ok else ExitCode.QUANTA_FAILED))


def _bps_demo(directory: Path, detectors: int, sleep: float, cores: int) -> None:
    from .demo.bps_demo import run_bps_demo

    result = run_bps_demo(directory, n_detectors=detectors, sleep=sleep, cores=cores)
    click.echo(f"bps submit {result.submit_yaml}: exit {result.returncode}   run: {result.output_run}")
    rows = [(label, c["log"], c["metadata"], c["output"]) for label, c in result.counts.items()]
    click.echo(f"{'task':<16}{'logs':>6}{'metadata':>10}{'outputs':>9}")
    click.echo("\n".join(f"{label:<16}{log:>6}{meta:>10}{out:>9}" for label, log, meta, out in rows))
    ok = result.returncode == 0 and bool(rows) and all(r[1] == r[2] == r[3] == detectors for r in rows)
    click.echo(
        "every quantum's outputs registered" if ok else f"see {result.submit_yaml.parent}/bps-submit.log"
    )
    sys.exit(int(ExitCode.SUCCESS if ok else ExitCode.QUANTA_FAILED))


def format_task_table(tasks: dict[str, dict[str, int]]) -> str:
    """Render per-task counts as an aligned text table, with a total row."""
    columns = ("succeeded", "failed", "blocked", "not_run")
    rows = [(label, *(str(counts[c]) for c in columns)) for label, counts in tasks.items()]
    rows.append(("TOTAL", *(str(sum(t[c] for t in tasks.values())) for c in columns)))
    header = ("task", *columns)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
