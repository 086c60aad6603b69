"""Erasure sweep: concepts × layer sets × tasks → one table (CSV + JSON) and one figure (HTML), resumable.
The stages live in interp.erasure_sweep (the demo runs them too); this script is their command line.

The stages, their outputs and what a rerun reuses are described in interp.erasure_sweep (printed below by
--help). The table is printed. `interp stats RUN` compares the systems of the run (κ, McNemar) since all of
them answered the same items.

On a shared CPU machine pass --threads 1: torch's default threads waiting for busy cores made the harness ~20x
slower here (8 mini-ultravox items: ~100 s with 2 threads under load, 5.4 s with 1).
A rerun with the same arguments recomputes nothing; more concepts or layer sets add rows. A rerun with
another model, limit, split, seed, positions or random match into the same RUN is refused (use another --out).
Usage:
    python scripts/erasure_sweep.py --sets sets/sst2 --out results/erasure [--model mini-ultravox]
        [--concepts text,random,chars,energy,pitch] [--layer-sets 0-29 0-14 15-29] [--positions audio]
        [--limit N] [--cache-dir DIR] [--dtype float32] [--split half|none] [--seed 0] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import interp.erasure_sweep
from interp.erasure_sweep import SweepPlan, format_table, header_line, run_sweep

SCRIPT = "scripts/erasure_sweep.py"


def _parse_args(argv: list[str] | None) -> SweepPlan:
    parser = argparse.ArgumentParser(description=f"{__doc__}\n{interp.erasure_sweep.__doc__}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-ultravox")
    parser.add_argument("--sets", type=Path, nargs="+", required=True, metavar="SET", help="spoken set folders")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder (created; resumed)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="caches, one per set (default RUN/caches)")
    parser.add_argument("--concepts", default="text,random,chars,energy,pitch",
                        help="comma list of chars, text, boc, energy, pitch, random")
    parser.add_argument("--layer-sets", nargs="+", default=["0-29", "0-14", "15-29"], metavar="LAYERS",
                        help='LLM layers per eraser: "0-29" "0-14" "15-29", comma lists "0,4,8", or all')
    parser.add_argument("--positions", choices=("audio", "all"), default="audio")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each set")
    parser.add_argument("--split", choices=("half", "none"), default="half",
                        help="half: fit on one half of the items, evaluate on the other (default); none: all items")
    parser.add_argument("--random-match", default="text", help="concept (or rank) the random control matches")
    parser.add_argument("--text-classes", type=int, default=32)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="stored precision of extracted caches")
    parser.add_argument("--batch-size", type=int, default=8, help="items per forward pass when extracting")
    parser.add_argument("--seed", type=int, default=0, help="split, random control, bootstrap")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    command = " ".join([SCRIPT, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    return SweepPlan(model=args.model, sets=args.sets, out=args.out, cache_dir=args.cache_dir,
                     concepts=args.concepts.split(","), layer_sets=args.layer_sets, positions=args.positions,
                     limit=args.limit, split=args.split, random_match=args.random_match,
                     text_classes=args.text_classes, dtype=args.dtype, batch_size=args.batch_size, seed=args.seed,
                     threads=args.threads, command=command)


def main(argv: list[str] | None = None) -> int:
    from interp.errors import InterpError

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("interp.erasure_sweep")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        plan = _parse_args(argv)
        rows = run_sweep(plan)
    except InterpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)
    print(header_line(plan))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
