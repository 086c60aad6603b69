"""What the logit lens costs on a cache of SmolLM2's width: rows/s and peak memory.

A synthetic float16 cache (default 100,000 audio rows x 576, 250 rows per item) is written with CacheWriter; then
SmolLM2-135M's own final RMSNorm and tied unembedding (vocab 49,152; interp.models.mini._smollm2) read it through
`interp.lens.logit_lens` in chunks of rows, keeping the top-k tokens per row.

Printed:
1. baseline: the same norm + unembedding + top-k on rows already in memory (float32), in the same chunks;
2. the lens end to end (cache read, float16 -> float32, norm, unembedding, top-k), and its ratio to the baseline;
3. bag-of-tokens scoring of the result (decoding + set look-ups per item);
4. peak RSS of this process (resource.getrusage), which must stay under 2 GB: the lens never holds more than
   chunk_rows x vocab logits (2,048 x 49,152 float32 = 403 MB at the default chunk) plus the top-k arrays.
Exit status 1 when the peak RSS reaches the limit.
Usage: python benchmarks/bench_lens.py [--rows 100000] [--chunk-rows 2048] [--top-k 5] [--baseline-rows 8192]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from activations import ActivationCache, CacheHeader, CacheWriter, ItemMeta, ItemRows
from interp.lens import TokenNormalizer, Unembed, logit_lens, score_lens
from interp.models.mini import _smollm2

LIMIT_MB = 2048.0
_WORDS = "the film was great and the service was slow but the music was wonderful tonight".split()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _write_cache(path: Path, rows: int, dim: int, per_item: int) -> None:
    header = CacheHeader(model="smollm2-135m-instruct", sites={"llm.layers.0": dim}, dtype="float16",
                         positions="audio", dataset="synthetic (bench_lens.py)")
    rng = np.random.default_rng(0)
    with CacheWriter.open(path, header, items_per_shard=64) as writer:
        for index in range(rows // per_item):
            edges = np.arange(per_item + 1, dtype=np.float32) * 0.16
            transcript = " ".join(rng.choice(_WORDS, size=12))
            writer.add(ItemMeta(id=f"i{index:06d}", index=index, transcript=transcript, label=None,
                                duration=float(edges[-1])),
                       ItemRows(pos=np.arange(per_item), kind=np.zeros(per_item, np.uint8), t_start=edges[:-1],
                                t_end=edges[1:], token_id=np.full(per_item, -1),
                                sites={"llm.layers.0": rng.standard_normal((per_item, dim), dtype=np.float32)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--per-item", type=int, default=250)
    parser.add_argument("--chunk-rows", type=int, default=2048)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--baseline-rows", type=int, default=8192)
    args = parser.parse_args()

    llm = _smollm2()
    dim, vocab = llm.unembed.weight.shape[1], llm.unembed.weight.shape[0]
    print(f"SmolLM2 loaded: d {dim}, vocab {vocab}, torch threads {torch.get_num_threads()}; "
          f"peak RSS so far {_peak_mb():.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache"
        start = time.perf_counter()
        _write_cache(path, args.rows, dim, args.per_item)
        cache = ActivationCache.open(path)
        print(f"synthetic cache: {cache.rows} rows x {dim} float16, {len(cache)} items, {cache.bytes / 1e6:.0f} MB "
              f"on disk, written in {time.perf_counter() - start:.1f} s")

        x = cache.read("llm.layers.0", items=[m.id for m in cache.items[:max(1, args.baseline_rows // args.per_item)]])
        start = time.perf_counter()
        Unembed.from_model(llm).top_k(x, k=args.top_k, chunk_rows=args.chunk_rows)
        baseline = len(x) / (time.perf_counter() - start)
        del x
        print(f"baseline (rows in memory, norm + unembed + top-{args.top_k}, chunk {args.chunk_rows}): "
              f"{baseline:,.0f} rows/s")

        start = time.perf_counter()
        result = logit_lens(cache, [0], model=llm, top_k=args.top_k, chunk_rows=args.chunk_rows)
        seconds = time.perf_counter() - start
        speed = result.rows / seconds
        print(f"logit lens end to end (read + decode + norm + unembed + top-{args.top_k}): {result.rows} rows in "
              f"{seconds:.1f} s = {speed:,.0f} rows/s; ratio to baseline {speed / baseline:.3f}")

        start = time.perf_counter()
        scores = score_lens(result, TokenNormalizer(llm.tokenizer), n_boot=1000)
        print(f"bag-of-tokens scoring of {len(cache)} items: {time.perf_counter() - start:.2f} s "
              f"(precision {scores.layers[0].precision.value:.3f} on random rows)")
    peak = _peak_mb()
    verdict = "OK" if peak < LIMIT_MB else "OVER THE LIMIT"
    print(f"peak RSS: {peak:.0f} MB (limit {LIMIT_MB:.0f} MB): {verdict}")
    if peak >= LIMIT_MB:
        sys.exit(1)


if __name__ == "__main__":
    main()
