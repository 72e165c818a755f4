#!/usr/bin/env bash
# Everything to run on the lent GPU machine, in one command (see benchmarks/gpu_prepare.sh for
# what must travel with it: .whl and .gpu_carry). Results go to $OUT (default benchmarks/out/gpu):
#   gpu_tests.xml, gpu_tests.log   pytest -m gpu (tests/test_gpu.py, tests/test_index_backends.py)
#   bench_gpu.json, bench_gpu.log  benchmarks/bench_gpu.py
# A failing test does not stop the benchmark; the exit status is the tests' or else the benchmark's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
PY="${PY:-python3}"

# The machine has no network: install the carried wheels (faiss-cpu, SQLAlchemy) beside its own packages.
# The repo itself is not installed: PYTHONPATH makes `import rag_lfm` find it.
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "WARNING: installing the carried wheels failed" >&2
else
    echo "WARNING: no .whl/ folder: run benchmarks/gpu_prepare.sh and carry .whl" >&2
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

{
    nvidia-smi -L || echo "nvidia-smi unavailable"
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "transformers", "sentence_transformers", "tokenizers", "numpy", "faiss", "sqlalchemy", "pytest", "rag_lfm"):
    try:
        mod = importlib.import_module(m)
        print(f"{m} {getattr(mod, '__version__', '?')} ({getattr(mod, '__file__', '?')})")
    except Exception as exc:
        print(f"{m} UNAVAILABLE: {type(exc).__name__}: {exc}")
import torch
print("cuda available:", torch.cuda.is_available(), "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
} 2>&1 | tee "$OUT/versions.log"

"$PY" -m pytest -q -m gpu tests/test_gpu.py tests/test_index_backends.py -rs -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "pytest exit status: $tests_rc"

# BENCH_ARGS: extra options, e.g. "--device cpu --small" to check this script on a machine without a GPU.
"$PY" benchmarks/bench_gpu.py ${BENCH_ARGS:-} --json --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}
echo "bench exit status: $bench_rc"

[ "$tests_rc" -ne 0 ] && exit "$tests_rc"
exit "$bench_rc"
