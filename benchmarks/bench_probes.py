"""A layer sweep of ridge probes: streaming sufficient statistics against scikit-learn's RidgeCV, same rows.

A synthetic float16 cache (default 260 items of 100-300 rows, about 52,000 rows x 576, 9 sites "layers") is
written with CacheWriter. Each layer has its own planted linear target y = x·w + σ·noise, σ growing with the
layer (held-out R² from about 0.9 down to about 0.1); features have an item effect (so item folds matter), a
decaying spectrum and large means (so centring matters). The targets are computed from the float16 values the
cache stores. Both paths probe every layer with the same 5 item folds (`probes.ridge.item_folds`) and the same
λ grid (relative λ x mean eigenvalue of the scatter, as `probes.boc.lambda_grid`):

1. ours: `RidgeAccumulator` fed by `ActivationCache.iter_batches`, then `fit_ridge` (λ by CV, refit on all rows);
2. baseline: the layer's rows read into memory (`cache.read`), then `sklearn.linear_model.RidgeCV(alphas=grid,
   cv=<the same folds>)`, one layer after the other.

Printed: both times (the baseline's read time beside it), the speed-up (target >= 5x), per layer the CV R² of
the chosen λ of both (`best_score` / `best_score_`), both λ and max |ΔR²| (must be ~1e-4 or less) and the largest
coefficient difference; then the peak RSS (VmHWM) of our path in a fresh process at two batch sizes over the whole
cache and at the smaller batch over half of it, beside the size of one site in float32 and of the cache: memory
follows the batch, not the cache.
Takes 2-4 minutes on 2 shared CPU cores. Usage:
    python benchmarks/bench_probes.py [--items 260 --dim 576 --layers 9 --folds 5 --lambdas 7] [--work DIR]
        [--rss-batch-rows 4096 32768] [--sklearn-dtype float32|float64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from activations import AUDIO, ActivationCache, CacheHeader, CacheWriter, ItemMeta, ItemRows
from probes.ridge import RidgeAccumulator, fit_ridge, item_folds

SPEEDUP_TARGET = 5.0
R2_TOLERANCE = 1e-4
_SECONDS_PER_ROW = 0.02

_RSS_CHILD = r"""
import json, sys
import numpy as np
from activations import ActivationCache
from probes.ridge import RidgeAccumulator, fit_ridge
def status(key):  # this process's own memory; ru_maxrss would report the parent's RSS at fork time
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1024
cache_path, targets_path, folds_path, batch_rows, n_layers, lambdas, share = sys.argv[1:8]
cache = ActivationCache.open(cache_path)
items = [meta.id for meta in cache.items[:max(5, round(float(share) * len(cache.items)))]]  # a prefix: rows align
targets, fold = np.load(targets_path), np.load(folds_path)
grid_rel = np.array(json.loads(lambdas))
before = status("VmRSS")
for layer, site in enumerate(sorted(cache.sites, key=lambda s: int(s.rsplit(".", 1)[1]))[:int(n_layers)]):
    acc, start = RidgeAccumulator(int(fold.max()) + 1), 0
    for x, rows in cache.iter_batches(site, int(batch_rows), items=items):
        acc.update(x, targets[start:start + len(x), layer], fold[start:start + len(x)])
        start += len(x)
    fit_ridge(acc, grid_rel * sum(float(np.trace(m.cxx)) for m in acc.folds) / acc.n_features)
print(json.dumps({"after_imports_mb": before, "peak_rss_mb": status("VmHWM"), "rows": start}))
"""


def _sites(n_layers: int) -> list[str]:
    return [f"llm.layers.{i}" for i in range(n_layers)]


def _noise_levels(n_layers: int) -> np.ndarray:
    return np.geomspace(0.3, 3.0, n_layers)


def _write_cache(work: Path, args: argparse.Namespace) -> tuple[ActivationCache, np.ndarray]:
    """The synthetic cache and its targets (rows, layers) float64; reused when `work` already holds them."""
    cache_dir, targets_file = work / "cache", work / "targets.npy"
    config = {"items": args.items, "dim": args.dim, "layers": args.layers, "seed": args.seed}
    config_file = work / "config.json"
    if targets_file.is_file() and config_file.is_file() and json.loads(config_file.read_text()) == config:
        print(f"reusing the synthetic cache in {cache_dir}")
        return ActivationCache.open(cache_dir), np.load(targets_file)
    start = time.perf_counter()
    sites = _sites(args.layers)
    header = CacheHeader(model="synthetic", sites={s: args.dim for s in sites}, dtype="float16", positions="audio",
                         dataset=f"synthetic probes bench {json.dumps(config, sort_keys=True)}")
    rng = np.random.default_rng(args.seed)
    spectrum = (1.0 + np.arange(args.dim)) ** -0.5  # decaying feature scales
    means = rng.normal(0.0, 4.0, (args.layers, args.dim))  # large offsets: centring must be exact
    weights = rng.standard_normal((args.layers, args.dim)) / np.sqrt((spectrum ** 2).sum())  # signal var ≈ 1
    sigma = _noise_levels(args.layers)
    targets = []
    with CacheWriter.open(cache_dir, header, items_per_shard=64, overwrite=True) as writer:
        for index in range(args.items):
            n = int(rng.integers(100, 301))
            edges = np.arange(n + 1, dtype=np.float32) * _SECONDS_PER_ROW
            site_rows, item_targets = {}, np.empty((n, args.layers))
            for layer, site in enumerate(sites):
                item_effect = rng.standard_normal(args.dim) * 0.5
                x = ((rng.standard_normal((n, args.dim)) + item_effect) * spectrum + means[layer]).astype(np.float16)
                site_rows[site] = x
                x64 = x.astype(np.float64)
                item_targets[:, layer] = (x64 - means[layer]) @ weights[layer] + sigma[layer] * rng.standard_normal(n)
            targets.append(item_targets)
            writer.add(ItemMeta(id=f"item{index:05d}", index=index, transcript="synthetic", label=None,
                                duration=float(edges[-1])),
                       ItemRows(pos=np.arange(n, dtype=np.int32), kind=np.full(n, AUDIO, np.uint8),
                                t_start=edges[:-1], t_end=edges[1:], token_id=np.full(n, -1, np.int64),
                                sites=site_rows))
    all_targets = np.concatenate(targets)
    np.save(targets_file, all_targets)
    config_file.write_text(json.dumps(config))
    cache = ActivationCache.open(cache_dir)
    print(f"wrote the synthetic cache ({cache.rows} rows x {args.dim} x {args.layers} sites, float16, "
          f"{cache.bytes / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
    return cache, all_targets


def _ours(cache: ActivationCache, targets: np.ndarray, fold: np.ndarray, grid_rel: np.ndarray, n_folds: int,
          batch_rows: int) -> list[dict]:
    out = []
    for layer, site in enumerate(_sites(targets.shape[1])):
        acc, start = RidgeAccumulator(n_folds), 0
        for x, _rows in cache.iter_batches(site, batch_rows):
            acc.update(x, targets[start:start + len(x), layer], fold[start:start + len(x)])
            start += len(x)
        grid = grid_rel * sum(float(np.trace(m.cxx)) for m in acc.folds) / acc.n_features
        result = fit_ridge(acc, grid)
        out.append({"grid": grid, "alpha": result.alpha, "r2": result.best_score, "coef": result.coef,
                    "intercept": result.intercept})
    return out


def _sklearn(cache: ActivationCache, targets: np.ndarray, splits: list, grids: list[np.ndarray],
             dtype: str) -> tuple[list[dict], float]:
    from sklearn.linear_model import RidgeCV

    out, read_seconds = [], 0.0
    for layer, site in enumerate(_sites(targets.shape[1])):
        start = time.perf_counter()
        x = cache.read(site).astype(dtype, copy=False)
        read_seconds += time.perf_counter() - start
        model = RidgeCV(alphas=grids[layer], cv=splits).fit(x, targets[:, layer])
        out.append({"alpha": float(model.alpha_), "r2": float(model.best_score_), "coef": model.coef_,
                    "intercept": float(model.intercept_)})
        del x
    return out, read_seconds


def _rss(cache: ActivationCache, work: Path, targets: np.ndarray, fold: np.ndarray, grid_rel: np.ndarray,
         args: argparse.Namespace) -> None:
    np.save(work / "folds.npy", fold)
    site_mb = cache.rows * args.dim * 4 / 1e6
    print(f"peak RSS of the streaming path in a fresh process ({args.rss_layers} layer(s); VmHWM; "
          "one site as float32 would "
          f"be {site_mb:.0f} MB, float64 {2 * site_mb:.0f} MB; the cache on disk {cache.bytes / 1e6:.0f} MB):")
    runs = [(rows, 1.0) for rows in args.rss_batch_rows] + [(args.rss_batch_rows[0], 0.5)]
    for batch_rows, share in runs:
        child = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(cache.path), str(work / "targets.npy"),
                                str(work / "folds.npy"), str(batch_rows), str(args.rss_layers),
                                json.dumps(grid_rel.tolist()), str(share)], check=True, capture_output=True, text=True,
                               env={**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads),
                                    "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
        rss = json.loads(child.stdout.strip().splitlines()[-1])
        batch_mb = batch_rows * args.dim * 4 / 1e6
        print(f"  batch {batch_rows:>6d} rows ({batch_mb:4.0f} MB float32), {rss['rows']:>6d} rows per layer: peak "
              f"{rss['peak_rss_mb']:5.0f} MB, {rss['peak_rss_mb'] - rss['after_imports_mb']:4.0f} MB above the RSS "
              f"after imports ({rss['after_imports_mb']:.0f} MB: numpy, h5py, torch via probes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=260, help="items of 100-300 rows (default 260: ~52k rows)")
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--lambdas", type=int, default=7, help="λ grid size: 1e-4 ... 1e2 x mean scatter eigenvalue")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows per streamed batch (ours)")
    parser.add_argument("--sklearn-dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of the rows handed to RidgeCV (float32: what cache.read returns)")
    parser.add_argument("--rss-batch-rows", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--rss-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads for both paths (threadpoolctl; default 1: on a shared machine OpenBLAS "
                             "threads that wait for a core make eigh and gemm many times slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the synthetic cache here")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache, targets = _write_cache(work, args)
        fold = item_folds(cache.row_table()["item"], args.folds, args.seed)
        splits = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(args.folds)]
        grid_rel = np.logspace(-4, 2, args.lambdas)
        print(f"{cache.rows} rows x {args.dim}, {len(cache.items)} items, {args.layers} layers, {args.folds} item "
              f"folds, BLAS threads {args.threads}, {args.lambdas} λ (relative {grid_rel[0]:g} ... {grid_rel[-1]:g}); "
              "noise σ per layer "
              f"{', '.join(f'{s:.2f}' for s in _noise_levels(args.layers))}")

        _ours(cache, targets[:, :1], fold, grid_rel, args.folds, args.batch_rows)  # warm-up (page cache, BLAS)
        start = time.perf_counter()
        ours = _ours(cache, targets, fold, grid_rel, args.folds, args.batch_rows)
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        theirs, read_seconds = _sklearn(cache, targets, splits, [r["grid"] for r in ours], args.sklearn_dtype)
        sklearn_seconds = time.perf_counter() - start

        print(f"{'layer':>5s} {'σ':>5s} {'λ ours':>10s} {'λ sklearn':>10s} {'CV R² ours':>11s} {'CV R² sklearn':>13s} "
              f"{'|ΔR²|':>9s} {'max|Δcoef|/max|coef|':>21s}")
        deltas = []
        for layer, (a, b) in enumerate(zip(ours, theirs)):
            delta = abs(a["r2"] - b["r2"])
            deltas.append(delta)
            coef_gap = float(np.abs(a["coef"] - b["coef"]).max() / np.abs(b["coef"]).max())
            print(f"{layer:5d} {_noise_levels(args.layers)[layer]:5.2f} {a['alpha']:10.4g} {b['alpha']:10.4g} "
                  f"{a['r2']:11.6f} {b['r2']:13.6f} {delta:9.2e} {coef_gap:21.2e}")
        same_alpha = sum(a["alpha"] == b["alpha"] for a, b in zip(ours, theirs))
        print(f"chosen λ equal on {same_alpha}/{args.layers} layers; max |ΔR²| = {max(deltas):.2e} "
              f"({'within' if max(deltas) <= R2_TOLERANCE else 'ABOVE'} the tolerance {R2_TOLERANCE:g})")
        print(f"ours (stream + RidgeAccumulator + fit_ridge, batch {args.batch_rows} rows): {ours_seconds:.2f} s")
        print(f"sklearn RidgeCV loop ({args.sklearn_dtype} in memory):  {sklearn_seconds:.2f} s "
              f"(of which cache.read {read_seconds:.2f} s)")
        ratio = sklearn_seconds / ours_seconds
        print(f"speed-up sklearn / ours: {ratio:.1f}x (target >= {SPEEDUP_TARGET:g}x: "
              f"{'met' if ratio >= SPEEDUP_TARGET else 'NOT met'})")
        _rss(cache, work, targets, fold, grid_rel, args)


if __name__ == "__main__":
    main()
