#!/usr/bin/env bash
# Install TRL (pinned) and srft into a virtual environment of its own, for
# benchmarks/peer_throughput.py's comparison with TRL's GRPOTrainer.
#
#   benchmarks/install-trl.sh /path/to/venv
#
# Its own venv so that TRL's requirements never move the main venv's packages. Order: torch
# first, alone (pip takes the CPU wheel of exactly this version), then srft editable with the
# same torch pinned, then TRL with the same torch and transformers pinned, so that TRL's
# resolver cannot swap either. Safe to run again: a venv that has everything is left as it is.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV_PATH" >&2
    exit 2
fi
VENV=$1
REPO=$(cd "$(dirname "$0")/.." && pwd)
TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=5.19.0
TRL_VERSION=1.16.0

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"

# pip, quiet: its output is shown only when it fails, less the lines that this machine's pip
# configuration prints for every package (local index folders that lack it).
pip_quiet() {
    local log rc=0
    log=$(mktemp)
    "$PY" -m pip --quiet --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        grep -v "^WARNING: Location 'file://" "$log" >&2 || true
    fi
    rm -f "$log"
    return "$rc"
}

have_all() {
    "$PY" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" "$TRL_VERSION" >/dev/null 2>&1 <<'CHECK'
import importlib.metadata as md, sys
assert md.version("torch").split("+")[0] == sys.argv[1]
assert md.version("transformers") == sys.argv[2]
assert md.version("trl") == sys.argv[3]
import srft, trl  # noqa: F401
from trl import GRPOConfig, GRPOTrainer  # noqa: F401
CHECK
}

if ! have_all; then
    pip_quiet install --upgrade "pip>=23"
    pip_quiet install "torch==$TORCH_VERSION"
    pip_quiet install "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" -e "$REPO"
    pip_quiet install "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" "trl==$TRL_VERSION"
fi

if ! out=$("$PY" -c "import srft; from trl import GRPOConfig, GRPOTrainer; import trl, transformers, torch; \
print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" 2>&1); then
    echo "$out" >&2
    echo "install-trl: trl does not import in $VENV" >&2
    exit 1
fi
echo "install-trl: $out in $VENV"
