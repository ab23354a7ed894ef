#!/usr/bin/env bash
# The GPU measurements of the torch fast path and the input pipeline, in one call, each stage under its
# own time limit (one that hangs cannot take the rest):
#   tests                     the fast-step tests and the on-device batches, on the GPU
#   framework_tax             kerascnn against plain PyTorch (cnn batch 128; resnet18 at 224, batch 64)
#   framework_tax_uncaptured  the default cnn with and without the CUDA graph of its train step
#   time_to_accuracy          the main job: seconds to 93% and 94% test accuracy
#   pipeline_throughput       the input pipeline with --augment basic beside ResNet-18's step at 224
#   time_to_accuracy_b512     the large-batch recipe (--batch-size 512 --lr 6e-3 --epochs 20)
# Results land in $OUT: stages.txt (the machine, each stage's exit status and time), NAME.out per stage
# (JSON where the benchmark prints it) and every stage's standard error in logs.tgz.
#
# Run:     OUT=/tmp/gpu bash benchmarks/gpu_session.sh            (about 9 minutes at most)
# Dry run: QUICK=1 OUT=/tmp/gpu bash benchmarks/gpu_session.sh    (tiny sizes, on a CPU too)
#
# On a machine without a package registry, carry what it lacks in ignored folders of the repository root:
# Keras' wheels in .whl/ (installed into /tmp/site) and Fashion-MNIST in .data/ (used as $KERASCNN_DATA):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl \
#       keras==3.15.1 namex==0.1.0 optree==0.20.0
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
LOGS=$(mktemp -d)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 KERAS_BACKEND=torch PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -d .data ] && export KERASCNN_DATA="$PWD/.data"
export KERASCNN_CACHE="${TMPDIR:-/tmp}/kerascnn-cache"

# stage NAME SECONDS COMMAND...: runs COMMAND with a time limit, stdout to $OUT/NAME.out, stderr to
# NAME.log in $OUT/logs.tgz (packed after every stage, so a call cut short keeps what ran)
stage() {
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.out" 2> "$LOGS/$name.log"
    local rc=$?
    echo "stage $name: rc $rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/stages.txt"
    tar czf "$OUT/logs.tgz" -C "$LOGS" .
}

if [ -n "${QUICK:-}" ]; then
    TAX=(--steps 2 --repeats 1 --cases cnn) PIPE=(--images 64 --size 64 --steps 2 --epochs 1) TESTS=(-k "fast_steps or captured")
else
    TAX=() PIPE=(--images 2048 --batch-size 64 --steps 20) TESTS=()
fi

{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, keras; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'keras', keras.__version__)"
} > "$OUT/stages.txt" 2>&1
cat "$OUT/stages.txt"
# The fast path computes what Keras' own step computes, and the batches kept on the device are the
# pipeline's, on this device (tolerances were set on CPU).
stage tests 80 $PY -m pytest -q -x -p no:cacheprovider tests/test_torch_program.py tests/test_torch_steps.py tests/test_torch_fit.py -m "not slow" "${TESTS[@]}" \
    tests/test_training.py::test_what_fit_iterates_holds_the_batches_of_each_epoch \
    tests/test_training.py::test_a_model_trains_the_same_on_what_fit_iterates_as_on_the_batches
# kerascnn against plain PyTorch, side by side (cnn batch 128; resnet18 at 224, batch 64).
stage framework_tax 160 $PY benchmarks/framework_tax.py --json "${TAX[@]}"
# What the CUDA graph of the train step buys, side by side (default cnn, batch 128).
stage framework_tax_uncaptured 50 $PY benchmarks/framework_tax.py --json --cases cnn --repeats 3 --uncaptured \
    --no-best-practice "${TAX[@]}"
# The main job's time to 93% and 94% test accuracy.
[ -z "${QUICK:-}" ] && stage time_to_accuracy 110 $PY benchmarks/time_to_accuracy.py
# The input pipeline with --augment basic against the ResNet-18 step at 224.
stage pipeline_throughput 95 $PY benchmarks/pipeline_throughput.py --json "${PIPE[@]}"
# The large-batch recipe (2,120 steps instead of 5,908). The stage limits add up to 555 s: with the
# wheels' install, the header and each stage's 5 s kill grace, within 590 s even at the worst.
if [ -z "${QUICK:-}" ]; then
    stage time_to_accuracy_b512 60 $PY benchmarks/time_to_accuracy.py --batch-size 512 --lr 6e-3 --epochs 20
fi
