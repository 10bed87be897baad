#!/usr/bin/env bash
# Set up quanta-pilot on a fresh machine: a Python 3.12 virtual environment in .venv
# with the LSST stack (from PyPI), the pilot and its test tools.  Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
    for candidate in python3.12 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local found
        found=$(ls -d "$(pyenv root)"/versions/3.12*/bin/python 2>/dev/null | sort -V | tail -n 1)
        if [ -n "$found" ]; then echo "$found"; return; fi
    fi
    echo "setup.sh: no Python 3.12 found (the LSST 30.x stack needs it); install it, e.g. 'pyenv install 3.12'" >&2
    exit 1
}

if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "quanta-pilot is set up: .venv/bin/pilot --help"
