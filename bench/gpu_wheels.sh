#!/usr/bin/env bash
# Prepare bench/wheelhouse/: the wheels bench/gpu_check.sh installs with --no-index on the GPU
# check machine (Python 3.12, manylinux x86_64, no network; torch+CUDA, transformers, accelerate,
# tokenizers, safetensors, pyarrow, psutil, tqdm, pytest, pyyaml, numpy are already there, see
# ../shared/notes/gpu-machine.md). Run here, where PyPI is reachable:
#     bash bench/gpu_wheels.sh            # ~1 min, ~12 MB; bench/wheelhouse is git-ignored
# Then hand it to the device tool with carry=["bench/wheelhouse"] (ignored paths travel up to
# 64 MiB in all; this script fails if the folder grows past 48 MiB).
# wandb is not brought (tens of MB with its OpenTelemetry tree): the check uses tracker=default.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/wheelhouse
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
mkdir -p "$OUT"
ds_version=$("$PY" -c 'import importlib.metadata as m; print(m.version("deepspeed"))')
# DeepSpeed publishes a source archive only; built without ops it is a pure-Python wheel
# (ops JIT-compile on first use; our engine needs none on CUDA: torch optimizers).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps "deepspeed==${ds_version}" -w "$OUT"
"$PY" -m pip wheel -q --no-deps "antlr4-python3-runtime==4.9.3" -w "$OUT"   # sdist only on PyPI
# Our runtime dependencies missing there, and theirs (pinned to what this venv runs).
pins=()
for dist in webdataset braceexpand hydra-core omegaconf zstandard \
            einops hjson msgpack ninja py-cpuinfo pydantic pydantic-core annotated-types typing-inspection \
            typing-extensions setuptools wheel; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist" 2>/dev/null || true)
    pins+=("${dist}${version:+==$version}")
done
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$OUT" "${pins[@]}"
size_mb=$(du -sm "$OUT" | cut -f1)
ls -1 "$OUT"
echo "bench/wheelhouse: ${size_mb} MB"
if [ "$size_mb" -gt 48 ]; then echo "bench/wheelhouse is over 48 MB: the device tool carries 64 MiB at most" >&2; exit 1; fi
