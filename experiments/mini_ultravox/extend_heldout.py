"""More held-out utterances for check_projector.py --more (issue 6's repeat check).

The shipped held-out set (data/mini_ultravox_heldout.json beside this script, 120 utterances) gives
intervals of about ±0.07 on the repeat WER, wider than what one continuation of the projector changes. This
script makes N more the same way (half SmolLM2 samples on the held-out topics and prompt styles, half
from the held-out template family; voices outside the training ranges, val_settings), none equal to a shipped
held-out sentence, a suite item or any sentence of the given training lists, and writes
data/mini_ultravox_heldout_more.json.

  python -m experiments.mini_ultravox.extend_heldout --n 380 \
      --exclude stream_sentences.json.gz experiments/mini_ultravox/data/sentences.json.gz
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

from experiments.mini_ultravox import DATA
from experiments.mini_ultravox import train_projector as tp

MORE = "mini_ultravox_heldout_more.json"


def training_texts(path: Path) -> set[str]:
    """Every sentence of a sentence file: a stream list ({"items": [...]}) or a sentences.json ({"items":
    {split: [...]}}), gzipped or not."""
    raw = path.read_bytes()
    items = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)["items"]
    groups = items.values() if isinstance(items, dict) else [items]
    return {it["text"] for group in groups for it in group}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=380, help="utterances to add (half SmolLM2 samples, half templates)")
    p.add_argument("--exclude", type=Path, nargs="+", required=True,
                   help="sentence files whose sentences must not be held out (every training list used)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, help=f"default: experiments/mini_ultravox/data/{MORE}")
    args = p.parse_args(argv)
    shipped = json.loads((DATA / "mini_ultravox_heldout.json").read_text(encoding="utf-8"))
    excluded = {str(path): training_texts(path) for path in args.exclude}
    seen = tp.suite_texts() | {it["text"] for it in shipped["items"]}.union(*excluded.values())
    banned = set(seen)
    stack = tp.load_stack("mini-ultravox")
    n_lm = args.n // 2
    lm = tp.lm_sentences(stack, n_lm, tp._LM_VAL_TOPICS, tp._LM_VAL_STYLES, 1000 + args.seed, seen)
    templates = tp.template_sentences(args.n - len(lm), tp._VAL_TEMPLATES, np.random.default_rng([args.seed, 21]),
                                      seen)
    sentences = [("lm-heldout", s) for s in lm] + [("template-heldout", s) for s in templates]
    assert not banned & {s for _, s in sentences} and len({s for _, s in sentences}) == len(sentences)
    voice_rng = np.random.default_rng([args.seed, 23])
    first = len(shipped["items"])
    items = [{"id": f"val-{first + i:05d}", "text": text, "source": source,
              **tp.pick_voice(voice_rng, 0.6, tp.val_settings)} for i, (source, text) in enumerate(sentences)]
    counts = {s: sum(1 for it in items if it["source"] == s) for s in ("lm-heldout", "template-heldout")}
    data = {"about": f"{len(items)} held-out utterances beyond the shipped 120 (mini_ultravox_heldout.json), made "
                     "the same way: SmolLM2 samples on the held-out topics and prompt styles, sentences of the "
                     "held-out template family, voices outside the training ranges; none in the excluded "
                     "training lists or a suite. check_projector.py --more scores them too.",
            "made_by": "python -m experiments.mini_ultravox.extend_heldout "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
            "excluded": {path: len(texts) for path, texts in excluded.items()},
            "counts": counts, "items": items}
    out = args.out or DATA / MORE
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"{len(items)} more held-out utterances -> {out}: {counts}")
    return counts


if __name__ == "__main__":
    main(sys.argv[1:])
