#!/usr/bin/env bash
# The GPU checks, as one prepared command for a session that is lent a device machine.
#
# The device image has torch, numpy, scipy, pandas, pillow, psutil, tqdm, safetensors and
# pytest, but not nibabel or pydicom (and no Qt: the widget tests are not run there).
# Here, once per session (pure-Python wheels, 5.7 MB):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl nibabel pydicom
#
# then one call of the device tool (about 5 minutes on a warm start):
#
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=560)
#
# What it runs, logs in $OUT (they come back):
#   machine.txt          nvidia-smi, torch and CUDA versions
#   tests.log            the device-agnostic tests: CPU and CUDA give the same reference
#                        model and the same score report (they skip without CUDA)
#   throughput_*.log     benchmarks/throughput.py on 200 clinical-size synthetic scans with
#                        8 reader processes, embedding on the GPU and then on the CPU
#   reference_speed.log  fitting 20 references and scoring a 128-slice volume on the GPU
# Record the figures in docs/benchmarks.md ("GPU checks").
#
# DEVICE=cpu bash benchmarks/device_check.sh runs the same steps here, on the CPU, as a
# dry run of the script (nothing to record).
set -u
OUT=${OUT:-/tmp/scanqc_device_out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 SCANQC_BENCH_DIR=/tmp/scanqc_bench

{
    date -u
    nvidia-smi 2>&1 | head -15
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
print('GPU:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
    nproc
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 1. device-agnostic tests (the repository's pytest options need plugins the image lacks)
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -o addopts="-ra" \
    -o filterwarnings=ignore::DeprecationWarning \
    tests/models/test_siamese.py tests/models/test_weights.py tests/batch/test_embed_settings.py \
    > "$OUT/tests.log" 2>&1
tail -5 "$OUT/tests.log"

# 2. throughput: the same 200 scans, embedding on $DEVICE, then on the CPU
timeout 200 "$PY" benchmarks/throughput.py --sizes --clinical 200 --workers 8 \
    --device "$DEVICE" --repeat 2 > "$OUT/throughput_$DEVICE.log" 2>&1
tail -4 "$OUT/throughput_$DEVICE.log"
if [ "$DEVICE" != cpu ]; then
    timeout 120 "$PY" benchmarks/throughput.py --sizes --clinical 200 --workers 8 \
        --device cpu > "$OUT/throughput_cpu.log" 2>&1
    tail -4 "$OUT/throughput_cpu.log"
fi

# 3. reference speed (issue 4's targets) on $DEVICE
timeout 120 "$PY" benchmarks/reference_speed.py --device "$DEVICE" --repeat 3 \
    > "$OUT/reference_speed.log" 2>&1
tail -8 "$OUT/reference_speed.log"
