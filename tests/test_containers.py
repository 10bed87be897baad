"""containers/: the glidein startup script run for real, the submit file parsed by HTCondor's bindings,
and the image recipes checked against the repository."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONTAINERS = REPO / "containers"
STARTUP = CONTAINERS / "glidein-startup.sh"

# A stand-in for `pilot start` (not written yet): records its argv, environment and the
# signals it gets, then waits for a signal or exits with FAKE_EXIT.
FAKE_PILOT = """\
#!/bin/bash
record=$FAKE_RECORD
{
    printf '%s\\n' "$@" > "$record.argv"
    env > "$record.env"
    trap 'echo TERM >> "$record.signals"; exit "${FAKE_EXIT_ON_SIGNAL:-16}"' TERM
    trap 'echo INT >> "$record.signals"; exit "${FAKE_EXIT_ON_SIGNAL:-16}"' INT
    trap 'echo USR1 >> "$record.signals"' USR1
    echo $$ > "$record.pid"
    touch "$record.ready"
    if [ -n "${FAKE_WAIT:-}" ]; then
        for _ in $(seq 600); do sleep 0.05; done  # at most ~30 s, then FAKE_EXIT
    fi
    exit "${FAKE_EXIT:-0}"
}
"""


@pytest.fixture
def glidein(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fake slot: scratch dir with a machine ad, job ad and token file; a fake pilot on PILOT_BIN."""
    scratch = tmp_path / "execute" / "dir_1234"
    scratch.mkdir(parents=True)
    (scratch / ".machine.ad").write_text(
        'Cpus = 2 * 2\nMemory = 8192\nDisk = 1048576\nGLIDEIN_Site = "SLAC"\n'
    )
    (scratch / ".job.ad").write_text('ClusterId = 42\nProcId = 0\nCmd = "glidein-startup.sh"\n')
    (scratch / "pilot.token").write_text("secret-token\n")
    fake = tmp_path / "bin" / "pilot"
    fake.parent.mkdir()
    fake.write_text(FAKE_PILOT)
    fake.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "_CONDOR_SCRATCH_DIR": str(scratch),
        "_CONDOR_MACHINE_AD": str(scratch / ".machine.ad"),
        "_CONDOR_JOB_AD": str(scratch / ".job.ad"),
        "PILOT_BIN": str(fake),
        "FAKE_RECORD": str(tmp_path / "record"),
    }
    yield env
    # A failed test may leave the script or the fake pilot (its own process group) running.
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _STARTED.clear()
    pid_file = tmp_path / "record.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


_STARTED: list[subprocess.Popen[str]] = []


def start(env: dict[str, str], *args: str, cwd: str | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["bash", str(STARTUP), *args],
        env=env,
        cwd=cwd or env["_CONDOR_SCRATCH_DIR"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _STARTED.append(proc)
    return proc


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def recorded(env: dict[str, str], what: str) -> str:
    return Path(env["FAKE_RECORD"] + "." + what).read_text()


def test_starts_pilot_with_scheduler_token_and_workspace(glidein: dict[str, str]) -> None:
    env = glidein | {"FAKE_EXIT": "0", "PILOT_LIFETIME": "3600"}
    proc = start(
        env, "--scheduler", "https://sched.example.org:8443", "--token-file", "pilot.token", "--", "-v"
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    scratch = env["_CONDOR_SCRATCH_DIR"]
    assert recorded(env, "argv").splitlines() == [
        "start",
        "--scheduler",
        "https://sched.example.org:8443",
        "--token-file",
        f"{scratch}/pilot.token",  # relative to the job's working directory, made absolute
        "--workspace",
        f"{scratch}/pilot",
        "--lifetime",
        "3600",
        "-v",
    ]
    pilot_env = dict(line.split("=", 1) for line in recorded(env, "env").splitlines() if "=" in line)
    for name in ("_CONDOR_SCRATCH_DIR", "_CONDOR_MACHINE_AD", "_CONDOR_JOB_AD"):
        assert pilot_env[name] == env[name]


def test_arguments_from_environment_and_exit_code_passed_through(glidein: dict[str, str]) -> None:
    token = Path(glidein["HOME"]) / "elsewhere.token"
    token.write_text("t\n")
    env = glidein | {
        "PILOT_SCHEDULER_URL": "http://127.0.0.1:9",
        "PILOT_TOKEN_FILE": str(token),
        "FAKE_EXIT": "18",
    }
    proc = start(env)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 18, stderr
    argv = recorded(env, "argv").splitlines()
    assert argv[:5] == ["start", "--scheduler", "http://127.0.0.1:9", "--token-file", str(token)]
    assert "--lifetime" not in argv


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_reaches_pilot_and_its_exit_code_is_kept(glidein: dict[str, str], signum: int) -> None:
    env = glidein | {"FAKE_WAIT": "1", "FAKE_EXIT_ON_SIGNAL": "16"}
    proc = start(env, "--scheduler", "https://s", "--token-file", "pilot.token")
    wait_for(Path(env["FAKE_RECORD"] + ".ready"))
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert recorded(env, "signals").split() == [signal.Signals(signum).name.removeprefix("SIG")]
    assert proc.returncode == 16, stderr


def test_sigusr1_is_forwarded_and_the_script_keeps_waiting(glidein: dict[str, str]) -> None:
    env = glidein | {"FAKE_WAIT": "1", "FAKE_EXIT_ON_SIGNAL": "14"}
    proc = start(env, "--scheduler", "https://s", "--token-file", "pilot.token")
    signals = Path(env["FAKE_RECORD"] + ".signals")
    wait_for(Path(env["FAKE_RECORD"] + ".ready"))
    proc.send_signal(signal.SIGUSR1)
    wait_for(signals)
    assert proc.poll() is None  # USR1 does not end the pilot, so the script goes on waiting
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert signals.read_text().split() == ["USR1", "TERM"]
    assert proc.returncode == 14, stderr


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        ((), {}, "no scheduler URL"),
        (("--scheduler", "https://s"), {}, "no token file"),
        (
            ("--scheduler", "https://s", "--token-file", "missing.token"),
            {},
            "missing.token is not a readable",
        ),
        (
            ("--scheduler", "https://s", "--token-file", "pilot.token"),
            {"PILOT_BIN": "/nonexistent/pilot"},
            "pilot",
        ),
        (("--scheduler",), {}, "--scheduler needs a URL"),
    ],
)
def test_bad_arguments_exit_19_with_one_line(
    glidein: dict[str, str], args: tuple[str, ...], extra_env: dict[str, str], message: str
) -> None:
    proc = start(glidein | extra_env, *args)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 19  # the pilot's CONFIG_ERROR
    assert stdout == ""
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("glidein-startup.sh: error: ") and message in stderr
    assert not Path(glidein["FAKE_RECORD"] + ".argv").exists()


def test_container_image_runs_pilot_under_apptainer(glidein: dict[str, str], tmp_path: Path) -> None:
    # A stand-in apptainer: records its own argv, then runs the command after the image.
    fake_apptainer = tmp_path / "bin" / "apptainer"
    fake_apptainer.write_text(
        "#!/bin/bash\n"
        'printf "%s\\n" "$@" > "$FAKE_RECORD.apptainer"\n'
        'while [ "$1" != "$PILOT_CONTAINER_IMAGE" ]; do shift; done\n'
        'shift; shift\nexec "$PILOT_BIN" "$@"\n'
    )
    fake_apptainer.chmod(0o755)
    token = tmp_path / "tokens" / "pilot.token"
    token.parent.mkdir()
    token.write_text("t\n")
    image = "/cvmfs/example.org/quanta-pilot.sif"
    env = glidein | {
        "PILOT_CONTAINER_IMAGE": image,
        "PILOT_APPTAINER": str(fake_apptainer),
        "FAKE_EXIT": "10",
    }
    proc = start(env, "--scheduler", "https://s", "--token-file", str(token))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 10, stderr
    scratch = env["_CONDOR_SCRATCH_DIR"]
    argv = recorded(env, "apptainer").splitlines()
    assert argv[0] == "exec"
    binds = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--bind"]
    assert binds == [scratch, str(token.parent)]  # the ads are inside the scratch dir already
    after_image = argv[argv.index(image) + 1 :]
    assert after_image[:2] == ["pilot", "start"]
    assert after_image[after_image.index("--workspace") + 1] == f"{scratch}/pilot"
    assert recorded(env, "argv").splitlines()[0] == "start"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_startup_script_is_shellcheck_clean() -> None:
    result = subprocess.run(["shellcheck", str(STARTUP)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_submit_file_parses_with_htcondor() -> None:
    import htcondor2 as htcondor

    submit = htcondor.Submit((CONTAINERS / "glidein.sub").read_text())
    assert submit.expand("universe") == "vanilla"
    assert submit.expand("executable") == "glidein-startup.sh"
    assert (CONTAINERS / submit.expand("executable")).is_file()
    arguments = shlex.split(submit.expand("arguments").strip('"'))
    assert arguments[arguments.index("--scheduler") + 1].startswith("https://")
    assert arguments[arguments.index("--token-file") + 1] == submit.expand("transfer_input_files")
    assert submit.expand("kill_sig") == "SIGTERM"
    assert int(submit.expand("request_cpus")) >= 1
    assert submit.expand("request_memory") and submit.expand("request_disk")
    assert "PILOT_LIFETIME=" in submit.expand("environment")
    assert "JobStatus == 2" in submit.expand("periodic_remove")
    for command in ("output", "error", "log", "job_max_vacate_time"):
        assert submit.expand(command), command
    assert submit.getQArgs().strip() == "$(n_glideins)"


def _copy_sources(recipe: Path) -> list[str]:
    """The repository paths a Dockerfile's COPY/ADD lines (from the build context) read."""
    sources: list[str] = []
    for line in recipe.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [word for word in words[1:] if not word.startswith("--")]
        if any(word.startswith("--from") for word in words[1:]):
            continue
        sources.extend(args[:-1])
    return sources


def _def_file_sources(recipe: Path) -> list[str]:
    """The repository paths in an apptainer definition's %files section."""
    sources, in_files = [], False
    for line in recipe.read_text().splitlines():
        if line.startswith("%"):
            in_files = line.split()[0] == "%files"
            continue
        if in_files and line.strip() and not line.strip().startswith("#"):
            sources.append(line.split()[0])
    return sources


def _packaged_paths() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    top_level = {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
    return {"pyproject.toml", project["project"]["readme"], *top_level}


def test_dockerfile_copies_existing_sources_and_the_whole_package() -> None:
    dockerfile = CONTAINERS / "Dockerfile"
    sources = _copy_sources(dockerfile)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
    assert _packaged_paths() <= {source.rstrip("/") for source in sources}
    text = dockerfile.read_text()
    assert text.splitlines()[[line.startswith("FROM") for line in text.splitlines()].index(True)] == (
        "FROM python:3.12-slim"
    )
    assert 'ENTRYPOINT ["pilot"]' in text
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    # Everything copied gets past .dockerignore (it lists what may enter the build context).
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore or f"!{source.rstrip('/')}" in ignore, source


def test_apptainer_definition_matches_the_dockerfile() -> None:
    definition = CONTAINERS / "pilot.def"
    sources = _def_file_sources(definition)
    for source in sources:
        assert (REPO / source).exists(), source
    assert {source.rstrip("/") for source in sources} == {
        source.rstrip("/") for source in _copy_sources(CONTAINERS / "Dockerfile")
    }
    text = definition.read_text()
    assert "Bootstrap: docker" in text and "From: python:3.12-slim" in text
    assert 'exec pilot "$@"' in text


def test_containers_readme_names_every_file() -> None:
    readme = (CONTAINERS / "README.md").read_text()
    for path in CONTAINERS.iterdir():
        if path.name != "README.md":
            assert path.name in readme, path.name
