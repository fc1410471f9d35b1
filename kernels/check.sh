#!/usr/bin/env bash
# Checks the committed PTX without a CUDA toolkit: regenerates it from the sources with NVRTC
# and fails if it differs, then assembles it with ptxas for sm_80 and sm_90 and fails on an
# error or a register spill. NVRTC and ptxas come from pinned PyPI wheels
# (kernels/requirements.txt) installed into a private virtual environment under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/cuda-tools-venv
# Debian and Ubuntu ship `venv` without ensurepip unless python3-venv is installed.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "python3-venv missing: installing it"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq python3-venv
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv
    else
        echo "error: python3 -m venv needs the python3-venv package (run as root or with sudo)" >&2
        exit 1
    fi
fi
if [ ! -x "$venv/bin/python" ] || ! cmp -s kernels/requirements.txt "$venv/requirements.txt"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r kernels/requirements.txt
    cp kernels/requirements.txt "$venv/requirements.txt"
fi
"$venv/bin/python" kernels/build_ptx.py --check
"$venv/bin/python" kernels/check_ptxas.py
