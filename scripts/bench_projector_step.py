"""Seconds per training step of scripts/train_projector.py at mini-ultravox's real sizes, on each device given,
as ratios against the first (run in the same process).

The frozen Whisper-base encoder and SmolLM2-135M-Instruct are built from the mini stack's configs with seeded
random weights: a step's cost does not depend on the weight values, so this runs where the weights cannot go
(a GPU machine that only receives a small working tree). The items are real cached training items (encoder
frames, transcripts, teacher top-k) from a work folder's training shards. Each step is a full training step: projector
forward, losses (phase 1: CTC; phase 2: cross-entropy + KL + CTC, as train_projector's loss_for), backward,
AdamW.

  python scripts/bench_projector_step.py --work runs/projector-v2 --devices cpu,cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from interp.models.base import build_seeded
from interp.models.mini import MINI_ULTRAVOX_PROJECTOR_HIDDEN
from interp.models.ultravox import UltravoxConfig, UltravoxModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_projector as tp  # noqa: E402


def shaped_stack(configs: Path, device: str) -> dict:
    """train_projector's stack dict with mini-ultravox's shapes and random frozen weights."""
    tokenizer = AutoTokenizer.from_pretrained(configs / "smollm2-135m-instruct")
    config = UltravoxConfig(AutoConfig.from_pretrained(configs / "whisper-base"),
                            AutoConfig.from_pretrained(configs / "smollm2-135m-instruct"),
                            hidden_size=MINI_ULTRAVOX_PROJECTOR_HIDDEN, stack_factor=8, projector_ln_mid=True)
    model = build_seeded(lambda: UltravoxModel(config), seed=0).eval().to(device)
    model.requires_grad_(False)
    return {"model": model, "tokenizer": tokenizer, "pad_id": int(tokenizer.pad_token_id or 0),
            "eos_id": int(tokenizer.eos_token_id), "name": "mini-ultravox (random weights)",
            "device": torch.device(device)}


def seconds_per_step(stack: dict, items: list[dict], phase: int, steps: int, warmup: int) -> float:
    projector = tp.fresh_projector(stack, 0)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-4)
    vocab = tp.ctc_vocabulary(stack, items)
    prompts = tp.kl_prompts()
    size = 16 if phase == 1 else 8
    times = []
    for step in range(warmup + steps):
        batch = [items[i] for i in tp.batch_indices(0, step, size, len(items))]
        t0 = time.perf_counter()
        loss, _ = tp.step_loss(stack, projector, batch, vocab, distil=phase == 2, kl_batch=2, prompts=prompts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if stack["device"].type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[warmup:])[steps // 2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=Path, default=Path.home() / ".cache" / "cascade-interp",
                   help="folder holding smollm2-135m-instruct/ and whisper-base/ (config.json, tokenizer files)")
    p.add_argument("--work", type=Path, required=True, help="train_projector.py work folder (its train shards)")
    p.add_argument("--items", type=int, default=96, help="first N training items to draw batches from")
    p.add_argument("--devices", default="cpu", help="comma-separated torch devices; ratios are against the first")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    items = tp.load_split(args.work, "train")[:args.items]
    if not items:
        raise SystemExit(f"no training shards in {args.work / 'shards'}")
    results = {}
    for device in args.devices.split(","):
        stack = shaped_stack(args.configs, device)
        name = torch.cuda.get_device_name(device) if stack["device"].type == "cuda" else \
            f"CPU, {torch.get_num_threads()} threads"
        results[device] = {"name": name, **{f"phase{k}_s": seconds_per_step(stack, items, k, args.steps, args.warmup)
                                            for k in (1, 2)}}
    first = results[args.devices.split(",")[0]]
    for device, r in results.items():
        print(f"{device} ({r['name']}): phase 1 {r['phase1_s']:.4f} s/step, phase 2 {r['phase2_s']:.4f} s/step; "
              f"{first['phase1_s'] / r['phase1_s']:.1f}x and {first['phase2_s'] / r['phase2_s']:.1f}x the first")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
