"""Training-set against held-out WER of exported mini-ultravox projectors: memorisation or under-fitting?

For each projector, the "repeat" generation and the CTC head's reading (train_projector.evaluate) on
--items training utterances of a train_projector.py work folder and on --items held-out ones, each spread
evenly over its split (so both mix the split's sources as the split does), with per-source figures. A low
training WER beside a high held-out one means the projector memorises its data (more or other data helps);
a high training WER means it under-fits (more steps or capacity help). A folder made with --n-flite adds a
third split: training sentences in flite's voices, which tells a new voice from a new sentence.

Usage: python -m experiments.mini_ultravox.projector_fit_gap --work runs/projector-v4 \
           runs/projector-v2/export/mini_ultravox_projector.safetensors \
           interp/resources/mini_ultravox_projector.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from experiments.mini_ultravox import train_projector as tp


def spread(items: list[dict], n: int) -> list[dict]:
    """n items evenly spaced over `items` (all of them when n >= len(items))."""
    if n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


def by_source(items: list[dict], samples: list[dict]) -> dict[str, dict]:
    """The two WERs per source (template, lm, real, wordnet, ...) of evaluated items."""
    from interp.text_metrics import word_error_rate

    groups: dict[str, list[dict]] = {}
    for item, sample in zip(items, samples):
        groups.setdefault(item["source"], []).append(sample)
    return {source: {"items": len(group),
                     "val_wer": word_error_rate([x["ref"] for x in group], [x["hyp"] for x in group]),
                     "val_ctc_wer": word_error_rate([x["ref"] for x in group], [x["ctc"] for x in group])}
            for source, group in sorted(groups.items())}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("projectors", type=Path, nargs="+", help="exported projector safetensors")
    parser.add_argument("--work", type=Path, required=True, help="train_projector.py work folder (its cached data)")
    parser.add_argument("--items", type=int, default=40, help="utterances of each split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the figures and the samples")
    args = parser.parse_args(argv)
    for path in args.projectors:
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    if not (args.work / "shards").is_dir():
        raise SystemExit(f"{args.work}: not a train_projector.py work folder (no shards/)")
    torch.set_num_threads(args.threads)
    config = json.loads((args.work / "data_config.json").read_text())
    stack = tp.load_stack(config.get("stack", "mini-ultravox"))
    train = tp.training_pool(args.work)
    flite = [it for it in train if it["engine"] == "flite"]
    splits = {"train": spread([it for it in train if it["engine"] != "flite"], args.items),
              **({"flite": spread(flite, args.items)} if flite else {}),
              "held-out": spread(tp.load_split(args.work, "val"), args.items)}
    vocab = tp.ctc_vocabulary(stack, train)
    results = {}
    for path in args.projectors:
        projector = tp.fresh_projector(stack, 0)
        projector.load_state_dict(load_file(str(path)), strict=True)
        results[str(path)] = {}
        for split, items in splits.items():
            wers, samples = tp.evaluate(stack, projector, items, vocab)
            results[str(path)][split] = {**wers, "items": len(items), "by_source": by_source(items, samples),
                                         "samples": samples}
            print(f"{path} {split} ({len(items)} utterances): repeat WER {wers['val_wer']:.3f}, "
                  f"CTC reading {wers['val_ctc_wer']:.3f}")
            for source, figures in results[str(path)][split]["by_source"].items():
                print(f"    {source:<18} n={figures['items']:>3}  repeat WER {figures['val_wer']:.3f}, "
                      f"CTC reading {figures['val_ctc_wer']:.3f}")
    if args.out:
        from interp.provenance import provenance

        args.out.parent.mkdir(parents=True, exist_ok=True)
        config = {"work": str(args.work), "items": args.items, "projectors": [str(p) for p in args.projectors]}
        args.out.write_text(json.dumps({"results": results, "provenance": provenance(
            command="experiments/mini_ultravox/projector_fit_gap.py", config=config, seed=None)}, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
