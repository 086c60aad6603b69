"""Seconds per training step of train_projector.py at mini-ultravox's real sizes, on each device given,
as ratios against the first (run in the same process).

The frozen Whisper-base encoder and SmolLM2-135M-Instruct are built from the mini stack's configs with seeded
random weights: a step's cost does not depend on the weight values, so this runs where the weights cannot go
(a GPU machine that only receives a small working tree). The items are real cached training items (encoder
frames, transcripts, teacher top-k) from a work folder's training shards. Each step is a full training step: projector
forward, losses (phase 1: CTC; phase 2: cross-entropy + KL + CTC, as train_projector's loss_for), backward,
AdamW. Phase 2 is timed twice, the two taking turns step by step: as train_projector runs it (the head the rows
share runs once, as a KV cache) and with full rows (how every shipped projector was trained), the baseline of
the shared head's speedup; their losses are compared step by step.

  python -m experiments.mini_ultravox.bench_projector_step --work runs/projector-v2 --devices cpu,cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from experiments.mini_ultravox import train_projector as tp
from interp.models.base import build_seeded
from interp.models.mini import MINI_ULTRAVOX_PROJECTOR_HIDDEN
from interp.models.ultravox import UltravoxConfig, UltravoxModel


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


def timed_steps(stack: dict, items: list[dict], phase: int, steps: int, warmup: int, kl_batch: int,
                modes: tuple[bool, ...] = (True,)) -> list[tuple[float, list[float]]]:
    """For each mode (train_projector's `reuse_head`), the median seconds of a step over `steps` after `warmup`
    and every step's loss. The modes train side by side, each its own fresh projector on the same batches,
    taking turns step by step, so that a noisy machine slows them alike and their losses compare step by step."""
    vocab = tp.ctc_vocabulary(stack, items)
    prompts = tp.kl_prompts()
    size = 16 if phase == 1 else 8
    projectors = [tp.fresh_projector(stack, 0) for _ in modes]
    optimizers = [torch.optim.AdamW(projector.parameters(), lr=1e-4) for projector in projectors]
    times, losses = [[] for _ in modes], [[] for _ in modes]
    for step in range(warmup + steps):
        batch = [items[i] for i in tp.batch_indices(0, step, size, len(items))]
        for m, reuse_head in enumerate(modes):
            t0 = time.perf_counter()
            loss, _ = tp.step_loss(stack, projectors[m], batch, vocab, distil=phase == 2, kl_batch=kl_batch,
                                   prompts=prompts, reuse_head=reuse_head)
            optimizers[m].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[m].step()
            if stack["device"].type == "cuda":
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t0)
            losses[m].append(float(loss.detach()))
    return [(sorted(t[warmup:])[steps // 2], lo) for t, lo in zip(times, losses)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=Path, default=Path.home() / ".cache" / "cascade-interp",
                   help="folder holding smollm2-135m-instruct/ and whisper-base/ (config.json, tokenizer files)")
    p.add_argument("--work", type=Path, required=True, help="train_projector.py work folder (its train shards)")
    p.add_argument("--items", type=int, default=96, help="first N training items to draw batches from")
    p.add_argument("--devices", default="cpu", help="comma-separated torch devices; ratios are against the first")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--kl-batch", type=int, default=8, help="KL rows per phase-2 step (8: the shipped recipe's)")
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
        [(phase1_s, _)] = timed_steps(stack, items, 1, args.steps, args.warmup, args.kl_batch)
        (phase2_s, losses), (full_s, full_losses) = timed_steps(stack, items, 2, args.steps, args.warmup,
                                                                args.kl_batch, modes=(True, False))
        results[device] = {"name": name, "phase1_s": phase1_s, "phase2_s": phase2_s, "phase2_full_rows_s": full_s,
                           "max_rel_loss_difference": max(abs(a - b) / b for a, b in zip(losses, full_losses))}
    first = results[args.devices.split(",")[0]]
    for device, r in results.items():
        print(f"{device} ({r['name']}): phase 1 {r['phase1_s']:.4f} s/step, phase 2 {r['phase2_s']:.4f} s/step; "
              f"{first['phase1_s'] / r['phase1_s']:.1f}x and {first['phase2_s'] / r['phase2_s']:.1f}x the first")
        print(f"  phase 2 with full rows (no shared head): {r['phase2_full_rows_s']:.4f} s/step; the shared head "
              f"makes a step {r['phase2_full_rows_s'] / r['phase2_s']:.2f}x faster; over the "
              f"{args.warmup + args.steps} steps its losses differ from full rows' by at most "
              f"{r['max_rel_loss_difference']:.1e} (relative)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
