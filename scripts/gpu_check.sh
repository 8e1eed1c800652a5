#!/usr/bin/env bash
# The prepared GPU check of issue 21: bash scripts/gpu_check.sh [--cpu] OUT_DIR
#   (no flag)  on a CUDA machine, at most 8 minutes; --cpu  the same checks at small shapes (CI).
# It needs only torch and transformers: this tree's srft is put first on PYTHONPATH (not
# pip-installed: a machine without network cannot fetch the build backend, and an srft installed
# from elsewhere must not be the one checked). PYTHON=... picks the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# torchrun and the checks must start as one process (a stray WORLD_SIZE would make srft distribute)
unset WORLD_SIZE RANK LOCAL_RANK MASTER_ADDR MASTER_PORT
for arg in "$@"; do
  if [[ "$arg" == "--cpu" ]]; then
    # the CPU mode shares a small machine: one thread per process, CUDA hidden
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" CUDA_VISIBLE_DEVICES=""
  fi
done
# found, not imported (an import of torch and transformers costs seconds on a busy CPU)
"$py" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
  torch transformers yaml safetensors tokenizers || {
  echo "gpu_check: needs torch and transformers (with pyyaml, safetensors, tokenizers) in $py" >&2; exit 2; }
exec "$py" "$root/scripts/gpu_check.py" "$@"
