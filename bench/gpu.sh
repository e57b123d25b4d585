#!/usr/bin/env bash
# The checks that need a GPU, in one command (for a lent GPU machine; CI has none).
#   bash bench/gpu.sh [OUT_DIR]
# Fashion-MNIST is read from /usr/share/datasets/fashion-mnist, or from .gpu-data/
# (a copy carried along) when the Debian package is not installed there.
set -u
out=${1:-bench/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GEOVIZ_CACHE=${GEOVIZ_CACHE:-/tmp/geoviz-cache} GEOVIZ_RUNS=${GEOVIZ_RUNS:-/tmp/geoviz-runs}
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d .gpu-data/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .gpu-data/fashion-mnist /usr/share/datasets/
fi
py=${PYTHON:-python3}
(nvidia-smi -L; $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())") 2>&1 | tee "$out/gpu_env.txt"
echo "== tests on CUDA (the CPU-only suite skips these)"
$py -m pytest -q -p no:cacheprovider tests/test_metric.py tests/test_gpu.py 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
echo "== bench/step_cost.py on CUDA"
$py bench/step_cost.py --device cuda --rounds 5 2>&1 | grep -v -i warn | tee "$out/gpu_step_cost.txt"
echo "== bench/landscape.py on CUDA (digits, 25 x 25)"
$py bench/landscape.py --device cuda --repeats 3 --no-race 2>&1 | tee "$out/gpu_landscape.txt"
echo "== sparsify on CUDA"
for args in "--dataset digits --model mlp" "--dataset fashion-mnist --model lenet300"; do
  $py -m geoviz sparsify $args --device cuda --quiet --json 2>&1 | tail -1 | tee -a "$out/gpu_sparsify.txt"
done
