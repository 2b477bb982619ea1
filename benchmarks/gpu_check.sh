#!/usr/bin/env bash
# The GPU check: train the CNN and the meta-network under KERAS_BACKEND=jax on the bundle's photos, score the
# held-out scenes, and print each stage's time, the GPU's use and the test table beside the same run on the CPU.
#
# Here (the bundle; a 40 MiB subset of ../shared/datasets/blur-photos-640, and the wheels missing there):
#     python benchmarks/gpu_pack.py && python benchmarks/gpu_pack.py --cpu-reference
# There (the device tool, carry: [".gpu"]), at most 8 minutes:
#     bash benchmarks/gpu_check.sh
# Options: --quick (tiny settings, a minute or two: checks the path), PYTHON=... (default python3).
# The machine it is for has Python 3.12 with JAX and PyTorch for CUDA and ONNX Runtime for the CPU, but no
# TensorFlow and no package registry (docs/gpu.md). It writes only to runs/ (gitignored) and $OUT.
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python3}
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
OUT=${OUT:-runs/gpu-out}
mkdir -p "$OUT"
BUNDLE=${BUNDLE:-.gpu}
RUN=runs/gpu-check
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - START )); }

if [ ! -f "$BUNDLE/manifest.json" ]; then
  say "error: no bundle at $BUNDLE: run 'python benchmarks/gpu_pack.py' where the shared photos are, carry .gpu"
  exit 1
fi

# 1. The carried wheels (Keras 3, namex, optree) into runs/gpu-site, ahead of everything else on the path.
mkdir -p runs
SITE="$PWD/runs/gpu-site"   # outside .gpu/, so that a run here never grows what is carried
"$PY" benchmarks/gpu_pack.py --bundle "$BUNDLE" --unpack "$SITE" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # so that nvidia-smi's memory figure is what JAX really uses
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}  # same-shaped meta-networks compile once
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

# 2. What is there: each module the run needs, its version or MISSING (cv2 is a 50 MB wheel: it must be there).
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, sys
need = ["keras", "jax", "numpy", "cv2", "PIL", "sklearn", "tqdm", "h5py", "ml_dtypes", "optree", "namex", "rich",
        "absl", "onnxruntime", "matplotlib"]
optional = ["tensorflow", "torch", "jax2onnx", "tf2onnx", "onnx", "pillow_heif"]
missing = []
for name in need + optional:
    try:
        mod = importlib.import_module(name)
        print(f"  {name:12s} {getattr(mod, '__version__', 'present')}")
    except Exception as err:  # noqa: BLE001
        print(f"  {name:12s} {'MISSING' if name in need else 'absent'} ({type(err).__name__})")
        if name in need:
            missing.append(name)
import jax
print(f"  jax devices  {', '.join(str(d) for d in jax.devices())}")
if missing:
    print(f"error: missing here: {', '.join(missing)}: carry their wheels (benchmarks/gpu_pack.py WHEELS)")
    sys.exit(1)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

# 3. GPU use, sampled every 0.5 s in the background: unix time, utilisation %, memory used MiB.
SMI="$OUT/nvidia_smi.csv"
: > "$SMI"
if command -v nvidia-smi >/dev/null; then
  ( while :; do
      v=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
      [ -n "$v" ] && echo "$(date +%s.%N),$v" >> "$SMI"
      sleep 0.5
    done ) &
  SAMPLER=$!
  trap 'kill $SAMPLER 2>/dev/null' EXIT
  say "nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
else
  say "no nvidia-smi here: the GPU's use is not sampled"
fi

# 4. The run: decode, CNN, meta-network, scoring (time-limited so the whole script ends inside 8 minutes).
LIMIT=$(( 440 - $(elapsed) ))
say "run (limit ${LIMIT} s)"
timeout "$LIMIT" "$PY" benchmarks/gpu_pack.py --bundle "$BUNDLE" --run "$RUN" $QUICK --report "$OUT/report.json" \
  2>&1 | grep -v -E "^\s*$|absl::InitializeLog|cudart_stub|computation placer" | tee -a "$LOG"
RC=${PIPESTATUS[0]}
[ "$RC" = 124 ] && say "error: the run passed its ${LIMIT} s limit"

# 5. The CNN's input pipeline alone against its training step, on this machine (about 20 s).
if [ "$RC" = 0 ] && [ $(( 460 - $(elapsed) )) -gt 30 ]; then
  timeout $(( 460 - $(elapsed) )) "$PY" benchmarks/gpu_pack.py --bundle "$BUNDLE" --throughput \
    --report "$OUT/throughput.json" 2>&1 | grep -E "input pipeline|error" | tee -a "$LOG"
fi

# 6. ONNX export under the torch backend (torch.onnx), in its own process: optional, checked against the model.
if [ "$RC" = 0 ] && [ ! -f "$RUN/model/cnn.onnx" ] && [ $(( 470 - $(elapsed) )) -gt 15 ]; then
  KERAS_BACKEND=torch timeout $(( 470 - $(elapsed) )) "$PY" -m ensemble.export "$RUN" 2>&1 | tail -3 | tee -a "$LOG" \
    || say "ONNX export under torch: not written (the .keras files serve; python -m ensemble.export where TensorFlow is)"
fi

[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
if [ "$RC" = 0 ]; then
  "$PY" benchmarks/gpu_pack.py --bundle "$BUNDLE" --summary "$OUT/report.json" --smi "$SMI" \
    --report "$OUT/summary.json" 2>&1 | tee -a "$LOG"
fi
say "gpu_check.sh: $(elapsed) s in all, exit $RC"
exit "$RC"
