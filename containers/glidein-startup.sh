#!/bin/bash
# Start a quanta-pilot in an HTCondor glidein slot and stay its parent until it ends.
#
# Usage: glidein-startup.sh [--scheduler URL] [--token-file FILE] [--] [PILOT_START_ARGS...]
#
# Runs  pilot start --scheduler URL --token-file FILE --workspace $_CONDOR_SCRATCH_DIR/pilot
#       [--lifetime $PILOT_LIFETIME] [PILOT_START_ARGS...]
# in the background, forwards SIGTERM, SIGINT and SIGUSR1 to it, and exits with its exit code.
#
# Environment (arguments win over it):
#   PILOT_SCHEDULER_URL    scheduler URL (or --scheduler)
#   PILOT_TOKEN_FILE       file holding the pilot's bearer token (or --token-file); a relative
#                          path is taken from the working directory, where HTCondor puts
#                          transferred input files
#   PILOT_LIFETIME         seconds the pilot may live (passed as --lifetime)
#   PILOT_CONTAINER_IMAGE  run the pilot inside this apptainer image (SIF file or docker:// URI)
#   PILOT_APPTAINER        apptainer (or singularity) executable; default: whichever is on PATH
#   PILOT_BIN              the pilot executable outside a container; default: pilot on PATH
#   _CONDOR_SCRATCH_DIR    the slot's scratch directory (default: the working directory)
#   _CONDOR_MACHINE_AD, _CONDOR_JOB_AD   set by HTCondor; read by the pilot, bound into the container
#
# Exit codes: the pilot's own (see `pilot --help`); 19 (the pilot's CONFIG_ERROR) when this
# script's arguments or environment are unusable (no scheduler URL, no readable token file,
# no pilot or apptainer).
set -u

me=glidein-startup.sh
EXIT_CONFIG_ERROR=19

die() {
    echo "$me: error: $*" >&2
    exit "$EXIT_CONFIG_ERROR"
}

scheduler=${PILOT_SCHEDULER_URL:-}
token_file=${PILOT_TOKEN_FILE:-}
while [ $# -gt 0 ]; do
    case $1 in
    --scheduler)
        [ $# -ge 2 ] || die "--scheduler needs a URL"
        scheduler=$2
        shift 2
        ;;
    --scheduler=*)
        scheduler=${1#*=}
        shift
        ;;
    --token-file)
        [ $# -ge 2 ] || die "--token-file needs a file"
        token_file=$2
        shift 2
        ;;
    --token-file=*)
        token_file=${1#*=}
        shift
        ;;
    --)
        shift
        break
        ;;
    *) break ;;
    esac
done

[ -n "$scheduler" ] || die "no scheduler URL: pass --scheduler URL or set PILOT_SCHEDULER_URL"
[ -n "$token_file" ] || die "no token file: pass --token-file FILE or set PILOT_TOKEN_FILE"
case $token_file in
/*) ;;
*) token_file=$PWD/$token_file ;;
esac
if [ ! -f "$token_file" ] || [ ! -r "$token_file" ]; then
    die "token file $token_file is not a readable file"
fi

scratch=${_CONDOR_SCRATCH_DIR:-$PWD}
[ -d "$scratch" ] || die "scratch directory $scratch (\$_CONDOR_SCRATCH_DIR) does not exist"
export _CONDOR_SCRATCH_DIR=$scratch
workspace=$scratch/pilot

pilot_args=(start --scheduler "$scheduler" --token-file "$token_file" --workspace "$workspace")
if [ -n "${PILOT_LIFETIME:-}" ]; then
    pilot_args+=(--lifetime "$PILOT_LIFETIME")
fi
pilot_args+=("$@")

if [ -n "${PILOT_CONTAINER_IMAGE:-}" ]; then
    apptainer=${PILOT_APPTAINER:-}
    if [ -z "$apptainer" ]; then
        apptainer=$(command -v apptainer || command -v singularity) ||
            die "PILOT_CONTAINER_IMAGE is set but neither apptainer nor singularity is on PATH"
    fi
    command -v "$apptainer" >/dev/null 2>&1 || die "apptainer executable $apptainer not found"
    # The scratch dir holds the workspace; the token file and the ads may live elsewhere.
    binds=("$scratch")
    for file in "$token_file" "${_CONDOR_MACHINE_AD:-}" "${_CONDOR_JOB_AD:-}"; do
        [ -n "$file" ] || continue
        dir=$(dirname "$file")
        case $dir/ in
        "$scratch"/*) ;;
        *) binds+=("$dir") ;;
        esac
    done
    bind_args=()
    for dir in "${binds[@]}"; do
        bind_args+=(--bind "$dir")
    done
    command=("$apptainer" exec "${bind_args[@]}" --pwd "$scratch" "$PILOT_CONTAINER_IMAGE" pilot "${pilot_args[@]}")
else
    pilot_bin=${PILOT_BIN:-pilot}
    command -v "$pilot_bin" >/dev/null 2>&1 ||
        die "pilot executable $pilot_bin not found (install quanta-pilot, set PILOT_BIN or PILOT_CONTAINER_IMAGE)"
    command=("$pilot_bin" "${pilot_args[@]}")
fi

echo "$me: slot scratch=$scratch machine_ad=${_CONDOR_MACHINE_AD:-none} job_ad=${_CONDOR_JOB_AD:-none}" >&2
echo "$me: running ${command[*]}" >&2

# Traps go in before the pilot starts, so no signal falls between the two; one that comes
# before the pilot's pid is known is forwarded as soon as it is.
child=
pending=
# shellcheck disable=SC2317  # called from the traps below
forward() {
    if [ -z "$child" ]; then
        pending="$pending $1"
        return
    fi
    echo "$me: forwarding SIG$1 to the pilot (pid $child)" >&2
    kill -s "$1" "$child" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward USR1' USR1

# Job control gives the pilot its own process group and, unlike a plain background job of a
# non-interactive shell, leaves SIGINT at its default instead of ignored. (Trapped signals
# are reset to their defaults in the child.)
set -m
"${command[@]}" &
child=$!
for sig in $pending; do
    forward "$sig"
done

# `wait` returns early (status > 128) whenever a trapped signal arrives; wait again until the
# pilot itself has ended (a finished child stays known to kill -0 until waited for).
while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
done
echo "$me: pilot exited with status $status" >&2
exit "$status"
