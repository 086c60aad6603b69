"""The sentence list of train_projector_stream.py, from a train_projector.py work folder.

Takes the folder's training sentences (sentences.json's train split and every extra block it holds) and,
with --unpicked, the WordNet examples and fortune-cookie sentences that no block picked; leaves out the
held-out sentences and the built-in suites' items (as train_projector.py does). Writes gzipped JSON
{"spec", "counts", "items": [{"text", "source"}, ...]}.

  python -m experiments.mini_ultravox.stream_sentences runs/projector-v11 --unpicked --out stream_sentences.json.gz
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

from experiments.mini_ultravox import train_projector as tp


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, help="a train_projector.py --work folder (its sentences.json and blocks)")
    p.add_argument("--unpicked", action="store_true", help="add the WordNet and fortune sentences no block picked")
    p.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    p.add_argument("--fortunes", type=Path, default=Path("/usr/share/games/fortunes"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    data = json.loads((args.work / "sentences.json").read_text())
    items = [{"text": it["text"], "source": it["source"]} for it in data["items"]["train"]]
    for block in tp.EXTRA_BLOCKS:
        if (args.work / block.file).exists():
            items += [{"text": it["text"], "source": it["source"]}
                      for it in json.loads((args.work / block.file).read_text())["items"]]
    held_out = tp.suite_texts() | {it["text"] for it in data["items"]["val"]}
    if args.unpicked:
        seen = held_out | {it["text"] for it in items}
        readers = {"wordnet": args.wordnet, "fortunes": args.fortunes}
        for source, root in readers.items():
            items += [{"text": text, "source": f"{source}-unpicked"} for text in tp.SOURCES[source][0](root, seen)]
    kept = [it for it in items if it["text"] not in held_out]
    counts = {s: sum(1 for it in kept if it["source"] == s) for s in sorted({it["source"] for it in kept})}
    spec = {"work": str(args.work), "unpicked": args.unpicked, "dropped_held_out": len(items) - len(kept)}
    args.out.write_bytes(gzip.compress(json.dumps({"spec": spec, "counts": counts, "items": kept}).encode(), mtime=0))
    print(f"{len(kept)} sentences -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): {counts}")
    return counts


if __name__ == "__main__":
    main(sys.argv[1:])
