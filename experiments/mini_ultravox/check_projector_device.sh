# Device check of train_projector.py (--device): the tiny stack's toy run, on cuda and on cpu, plus a
# stop after one step and a resume on cuda; then the per-step losses compared (printed), and the timings.
#
# Run on the GPU machine from the repository root, with the toy data prepared beforehand wherever the TTS
# engines are installed (the GPU machine needs none of them, nor any model weights):
#   python -m experiments.mini_ultravox.train_projector --work .gpucheck/tiny --stack tiny-ultravox \
#       --n-train 48 --n-val 8 --lm-fraction 0 --real-fraction 0.25 --threads 1 --prep-only
#   OUT=/some/folder bash experiments/mini_ultravox/check_projector_device.sh [.gpucheck/tiny]
# Wheels in .whl/ (soundfile, cffi, pycparser; platformdirs for bench_projector_step.py), where the machine
# lacks them, are installed first.
set -u
: "${OUT:?set OUT to the folder for the logs}"
work=${1:-.gpucheck/tiny}
scratch=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$scratch/site:$PWD"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$scratch/site" \
    .whl/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
torch.cuda.get_device_name())"
args="--stack tiny-ultravox --n-train 48 --n-val 8 --lm-fraction 0 --real-fraction 0.25 --ctc-steps 40
  --ctc-batch-size 8 --steps 60 --batch-size 8 --kl-batch 4 --eval-every 50 --eval-items 4 --threads 4 --seed 0"
for run in cuda cpu cuda-resumed; do
  device=${run%-resumed}
  w="$scratch/$run"
  cp -r "$work" "$w"
  if [ $run = cuda-resumed ]; then
    python3 -m experiments.mini_ultravox.train_projector --work "$w" $args --device $device --max-minutes 0 \
      > "$OUT/$run-stop.out" 2>&1 || { tail -20 "$OUT/$run-stop.out"; exit 1; }
  fi
  start=$SECONDS
  python3 -m experiments.mini_ultravox.train_projector --work "$w" $args --device $device \
    --export "$w/export/p.safetensors" > "$OUT/$run.out" 2>&1 || { tail -30 "$OUT/$run.out"; exit 1; }
  echo "$run: $((SECONDS - start)) s wall"
  grep -E "validation WER|exported" "$OUT/$run.out"
  cp "$w/log.jsonl" "$OUT/log-$run.jsonl"
  python3 -c "import json, sys; print('$run', json.load(open(sys.argv[1]))['training']['hardware'])" "$w/export/p.json"
done
python3 - <<'PY'
import json, os
def losses(run):
    return {e["step"]: e for e in map(json.loads, open(f"{os.environ['OUT']}/log-{run}.jsonl")) if "loss" in e}
cuda, cpu, resumed = losses("cuda"), losses("cpu"), losses("cuda-resumed")
print("steps", len(cuda), len(cpu), len(resumed))
for name, other in (("cpu", cpu), ("cuda-resumed", resumed)):
    for key in ("loss", "ctc", "ce", "kl"):
        shared = [s for s in cuda if key in cuda[s]]
        d = [abs(cuda[s][key] - other[s][key]) for s in shared]
        print(f"cuda vs {name}: max |{key} difference| {max(d):.2e} over {len(d)} steps; cuda first/last {key}",
              f"{cuda[shared[0]][key]:.4f} / {cuda[shared[-1]][key]:.4f}")
print("step s (median): cuda", sorted(e["step_s"] for e in cuda.values())[len(cuda)//2],
      "cpu", sorted(e["step_s"] for e in cpu.values())[len(cpu)//2])
PY
