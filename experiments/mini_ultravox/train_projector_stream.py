"""Train mini-ultravox's projector on speech synthesised while it trains (for a GPU machine; issue 6).

train_projector.py trains from cached encoder outputs and teacher logits (~2.7 GB for the shipped pool), which
a machine that receives 64 MiB at a time (this workplace's GPU machines) cannot be sent. This script needs
only a sentence list, the TTS voices and the frozen weights (`--weights`: SmolLM2's 98 MB GGUF and
Whisper-base's encoder, 41 MB in float16; pack them with pack_stack_weights.py). Worker processes
speak each step's sentences (piper or espeak-ng, settings drawn afresh by vary_settings) and compute their
log-mel features; the main process runs the encoder on the batch, the teacher (SmolLM2 reading the transcript)
for the KL rows, and train_projector's losses (step_loss: "repeat" cross-entropy + KL + CTC). No utterance is
heard twice: a sentence met again comes in a new voice setting.

Everything a step sees is a function of (--seed, step, row), so a rerun with the same seed gives the same
curve (up to the device's arithmetic), and a killed run resumes from its last checkpoint in --work.

  python -m experiments.mini_ultravox.train_projector_stream --sentences stream.json.gz --weights .stack \\
      --device cuda --init interp/resources/mini_ultravox_projector.safetensors --work runs/stream --steps 1500 \\
      --batch-size 32 --kl-batch 8 --workers 14 --export runs/stream/export/mini_ultravox_projector.safetensors
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import multiprocessing
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from experiments.mini_ultravox import train_projector as tp

_log = logging.getLogger("train_projector_stream")

TEACHER_CHUNK = 64
"""Steps whose KL rows get their teacher responses in one batched generate (per-step generation is slow)."""


# ---------------------------------------------------------------------------------------------- the frozen stack

def load_weights_stack(folder: Path, device: str) -> dict:
    """train_projector.load_stack's dict, built from a --weights folder instead of the carrier packages."""
    from transformers import WhisperConfig, WhisperFeatureExtractor

    from interp.models.gguf_llm import load_from_gguf
    from interp.models.mini import assemble_mini_ultravox

    ggufs = sorted((folder / "smollm2").glob("*.gguf"))
    if len(ggufs) != 1:
        raise SystemExit(f"--weights {folder}: expected one .gguf in {folder / 'smollm2'}, found {len(ggufs)}")
    llm, tokenizer = load_from_gguf(ggufs[0])
    whisper = folder / "whisper-base"
    encoder = {k: v.float() for k, v in load_file(str(whisper / "encoder.safetensors")).items()}
    speech_lm = assemble_mini_ultravox(WhisperConfig.from_pretrained(whisper), encoder, llm.eval(), tokenizer,
                                       WhisperFeatureExtractor.from_pretrained(whisper), trained=False)
    return tp.stack_dict(speech_lm, "mini-ultravox", device)


def weights_fingerprint(stack: dict) -> str:
    """sha256 over the frozen parameters (names and float32 bytes): the same stack on any machine."""
    digest = hashlib.sha256()
    for name, value in sorted(stack["model"].state_dict().items()):
        if not name.startswith("multi_modal_projector."):
            digest.update(name.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- the stream

def read_sentences(path: Path) -> list[dict]:
    """The sentence list: {"items": [{"text", "source"}, ...]} as JSON, gzipped or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    items = json.loads(raw)["items"]
    if not items:
        raise SystemExit(f"--sentences {path}: no items")
    return items


def step_tasks(args, sentences: list[dict], step: int, n_prompts: int) -> list[dict]:
    """What step `step` (0-based) speaks: sentences in seeded per-epoch order, a fresh voice per row, and a KL
    prompt for the first --kl-batch rows."""
    from interp.data.tts import vary_settings

    tasks = []
    for row, index in enumerate(tp.batch_indices(args.seed, step, args.batch_size, len(sentences))):
        rng = np.random.default_rng([args.seed, 13, step, row])
        task = {"id": f"s{step:06d}-{row:02d}", "index": index, "text": sentences[index]["text"],
                "source": sentences[index].get("source", ""), **tp.pick_voice(rng, args.piper_fraction, vary_settings)}
        if row < args.kl_batch:
            task["kl_prompt"] = int(rng.integers(n_prompts))
        tasks.append(task)
    return tasks


_FEATURES = None
_ORT_THREADS = 1


def _init_worker(feature_class: type, feature_config: dict, ort_threads: int) -> None:
    """Each worker: its feature extractor rebuilt from its config, one torch thread, and `ort_threads`
    onnxruntime threads for piper (by default every session would take all cores, once per worker).

    The extractor travels as its config, not pickled whole: its mel filters (129 kB pickled) exceed a pipe's
    buffer, and a spawned worker reads its start arguments only after importing this script (torch,
    transformers: seconds), so the parent, writing them, waited for each worker in turn (~14 s each on the
    H200 machine: 200 s before the first step with 14 workers)."""
    global _FEATURES, _ORT_THREADS
    _FEATURES, _ORT_THREADS = feature_class(**feature_config), ort_threads
    torch.set_num_threads(1)


def speak(task: dict) -> tuple[np.ndarray, int, float]:
    """A task's log-mel features (mels, frames) as the encoder takes them, its valid mel frames, its seconds."""
    from interp.data.tts import open_engine, settings_from_dict

    utterance = open_engine(task["engine"], _ORT_THREADS).speak(task["text"], settings_from_dict(task["settings"]))
    samples = utterance.samples[:int(tp.MAX_SECONDS * 16_000)]
    fe = _FEATURES
    features = fe([np.asarray(samples, dtype=np.float32)], sampling_rate=16_000, padding="longest",
                  pad_to_multiple_of=fe.hop_length, truncation=False, return_attention_mask=True, return_tensors="np")
    return features["input_features"][0], int(features["attention_mask"].sum()), len(samples) / 16_000


@torch.no_grad()
def encode_batch(stack: dict, spoken: list[tuple[np.ndarray, int, float]]) -> list[torch.Tensor]:
    """Encoder outputs of a batch in one pass (the encoder masks each item's padding, so an item's output is
    that of its clip alone), each cut to its valid frames."""
    width = max(f.shape[-1] for f, _, _ in spoken)
    feats = torch.stack([F.pad(torch.from_numpy(f), (0, width - f.shape[-1])) for f, _, _ in spoken])
    lens = torch.tensor([n for _, n, _ in spoken])
    device = stack["device"]
    hidden = stack["model"].audio_tower(feats.to(device), lens.to(device))
    return [hidden[row, :int((n - 1) // 2 + 1)] for row, n in enumerate(lens.tolist())]


def teacher_chunk(args, stack: dict, sentences: list[dict], first: int, prompts: list) -> dict[str, dict]:
    """Teacher targets for the KL rows of steps first .. first + TEACHER_CHUNK - 1, by task id (greedy
    generation on the transcript, batched: the padding a batch adds can move the last digits)."""
    tasks = [t for step in range(first, first + TEACHER_CHUNK)
             for t in step_tasks(args, sentences, step, len(prompts)) if "kl_prompt" in t]
    out = {}
    for start in range(0, len(tasks), args.teacher_batch):
        part = tasks[start:start + args.teacher_batch]
        for task, target in zip(part, tp.teacher_targets(stack, part, prompts, args.top_k, args.kl_max_tokens)):
            out[task["id"]] = target
    return out


# ---------------------------------------------------------------------------------------------- the loop

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=Path, required=True,
                   help='JSON (or .json.gz) {"items": [{"text", "source"}, ...]}: never held-out or suite sentences')
    p.add_argument("--weights", type=Path, help="folder from pack_stack_weights.py (default: the carrier "
                                                "packages, as train_projector.py loads them)")
    p.add_argument("--stack", choices=["mini-ultravox", "tiny-ultravox"], default="mini-ultravox",
                   help="tiny-ultravox: seeded random weights, for smoke tests of the loop")
    p.add_argument("--work", type=Path, required=True, help="log.jsonl, checkpoints, config")
    p.add_argument("--init", type=Path, help="projector safetensors to start from (default: seeded fresh)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--kl-batch", type=int, default=8, help="rows per step that also get a KL row")
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--ctc-weight", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--piper-fraction", type=float, default=0.6)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--kl-max-tokens", type=int, default=16)
    p.add_argument("--teacher-batch", type=int, default=128, help="rows per teacher generate call")
    p.add_argument("--workers", type=int, default=2, help="TTS worker processes")
    p.add_argument("--ort-threads", type=int, default=1, help="onnxruntime threads per worker (piper)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, help="stop (checkpointed) after this many minutes")
    p.add_argument("--export", type=Path, help="write the projector (safetensors) and its card (.json) here")
    return p.parse_args(argv)


_CONFIG_KEYS = ("sentences_sha256", "stack", "init", "seed", "steps", "batch_size", "kl_batch", "kl_weight",
                "ctc_weight", "lr", "warmup", "weight_decay", "piper_fraction", "top_k", "kl_max_tokens")


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    for name, given in (("--sentences", args.sentences), ("--init", args.init)):
        if given is not None and not given.is_file():
            raise SystemExit(f"{name} {given}: no such file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as on the CPU
    sentences = read_sentences(args.sentences)
    args.sentences_sha256 = hashlib.sha256(args.sentences.read_bytes()).hexdigest()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k in _CONFIG_KEYS if (v := getattr(args, k)) is not None}
    if args.init is not None:
        config["init"] = f"{args.init} (sha256 {hashlib.sha256(args.init.read_bytes()).hexdigest()[:16]})"
    tp._lock_config(work / "train_config.json", config)

    t0 = time.perf_counter()
    stack = (load_weights_stack(args.weights, args.device) if args.weights is not None
             else tp.load_stack(args.stack, args.device))
    fingerprint = weights_fingerprint(stack)
    _log.info("frozen stack %s on %s in %.1f s; weights sha256 %s", stack["name"], stack["device"],
              time.perf_counter() - t0, fingerprint)
    tok = stack["tokenizer"]
    for it in sentences:
        it["tokens"] = tok(it["text"], add_special_tokens=False)["input_ids"]
    vocab = tp.ctc_vocabulary(stack, sentences)
    prompts = tp.kl_prompts()

    projector = tp.fresh_projector(stack, args.seed)
    if args.init is not None:
        projector.load_state_dict(load_file(str(args.init)), strict=True)
    params = list(projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, tp.lr_lambda(args.warmup, args.steps))
    step, log = tp.resume(work, projector, optimizer, scheduler, stack["device"])
    train_seconds = sum(e.get("step_s", 0.0) for e in log)
    speech_seconds = sum(e.get("speech_s", 0.0) for e in log)

    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no CUDA state forked
    fe = stack["feature_extractor"]
    pool = context.Pool(args.workers, initializer=_init_worker, initargs=(type(fe), fe.to_dict(), args.ort_threads))
    all_tasks = (task for s in range(step, args.steps) for task in step_tasks(args, sentences, s, len(prompts)))
    spoken_stream = pool.imap(speak, all_tasks, chunksize=2)
    teacher: dict[str, dict] = {}
    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, desc="stream", unit="step")
    stopped, last = False, {}
    try:
        with open(work / "log.jsonl", "a") as log_file:
            while step < args.steps:
                t0 = time.perf_counter()
                tasks = step_tasks(args, sentences, step, len(prompts))
                spoken = [next(spoken_stream) for _ in tasks]
                t_speech = time.perf_counter()
                if any(t["id"] not in teacher for t in tasks if "kl_prompt" in t):
                    # chunks start at multiples of TEACHER_CHUNK, so a resumed run batches the teacher as before
                    teacher = teacher_chunk(args, stack, sentences, step - step % TEACHER_CHUNK, prompts)
                t_teacher = time.perf_counter()
                items = []
                for task, enc, (_, _, seconds) in zip(tasks, encode_batch(stack, spoken), spoken):
                    item = {**task, "enc": enc, "tokens": sentences[task["index"]]["tokens"]}
                    if task["id"] in teacher:
                        target = teacher.pop(task["id"])
                        item.update(response=target["response"], kl_idx=target["idx"].long(), kl_logp=target["logp"])
                    items.append(item)
                loss, losses = tp.step_loss(stack, projector, items, vocab, distil=True, kl_batch=args.kl_batch,
                                            kl_weight=args.kl_weight, ctc_weight=args.ctc_weight, prompts=prompts)
                values = {k: float(v.detach()) for k, v in (("loss", loss), *losses.items())}
                lr = tp.optimizer_step(loss, params, optimizer, scheduler)
                step += 1
                dt = time.perf_counter() - t0
                train_seconds += dt
                seconds = sum(s for _, _, s in spoken)
                speech_seconds += seconds
                last = {"step": step, **values, "lr": lr, "items_per_s": len(items) / dt, "step_s": dt,
                        "wait_speech_s": t_speech - t0, "teacher_s": t_teacher - t_speech, "speech_s": seconds,
                        "elapsed_s": time.perf_counter() - started}
                log_file.write(json.dumps(last) + "\n")
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
                out_of_time = args.max_minutes is not None and time.perf_counter() - started > 60 * args.max_minutes
                if step % args.ckpt_every == 0 or step == args.steps or out_of_time:
                    log_file.flush()
                    tp.save_checkpoint(work, projector, optimizer, scheduler, step)
                if out_of_time and step < args.steps:
                    bar.write(f"--max-minutes reached at step {step}; checkpoint saved, rerun to continue")
                    stopped = True
                    break
    finally:
        pool.terminate()
        bar.close()

    result = {"step": step, "completed": step >= args.steps and not stopped, "last": last,
              "weights_sha256": fingerprint}
    if args.export:
        card = tp.projector_card(
            stack, projector, work, init=args.init,
            data={"sentences": len(sentences),
                  "sources": dict(sorted(Counter(it.get("source", "") for it in sentences).items())),
                  "utterances_heard": step * args.batch_size, "speech_hours": round(speech_seconds / 3600, 2),
                  "tts": "synthesised during training: piper and espeak-ng, vary_settings drawn per (seed, step, "
                         "row); no utterance heard twice"},
            training={**config, "script": "experiments/mini_ultravox/train_projector_stream.py", "steps_done": step,
                      "completed": result["completed"], "train_seconds": round(train_seconds, 1),
                      "wall_seconds_this_call": round(time.perf_counter() - started, 1), "workers": args.workers},
            frozen_weights_sha256=fingerprint)
        tp.export(args.export, projector, card)
        print(f"exported {args.export} and {args.export.with_suffix('.json')}")
    print(f"{step} steps, {train_seconds:.0f} s of steps, {speech_seconds / 3600:.2f} h of speech; last {last}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
