"""Layer sweeps: the four probes (energy, pitch, CTC, bag-of-characters) at every site of a cache.

The question is where, layer by layer, a speech LLM's audio positions carry acoustics (energy, pitch)
and text (CTC decodability, character counts). One item split serves every probe and site, so curves
differ only by the representation: a seeded share of items is held out for scoring; λ (ridge) and early
stopping (CTC) are chosen on the training items alone. Splits are by item, never by row: neighbouring
rows of one utterance are nearly copies, and a row split would score memory, not generalisation.

Targets are computed once per item and reused for every site: energy and log-F0 (Praat) over each audio
row's [t_start, t_end) from the item's waveform, characters from its transcript. Energy and pitch are
row-level ridge probes fitted from streamed sufficient statistics (`probes.ridge`), so a site is never
in memory; the bag-of-characters probe keeps one mean row per item; the CTC probe loads the audio rows
of the training items of one site at a time (its test items are streamed).

Row-level R² on the held-out items is sklearn's `r2_score` over all their rows, computed from per-item
sums: with y centred on the held-out mean μ, each item keeps its row count n_i, Σy, Σy² and its residual
sum of squares e_i, and R² = 1 − Σe_i / (Σ Σy² − (Σ Σy)² / Σn_i). The interval resamples items (not rows)
with replacement and recomputes that ratio from the resampled sums: 1,000 resamples, percentile 95 %,
`interp.estimates.bootstrap_ci` with the run's seed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from activations import AUDIO, ActivationCache
from activations.extract import set_items_of
from interp.data.audio import SAMPLE_RATE
from interp.data.manifest import SpokenSet
from interp.errors import InterpError
from interp.estimates import Estimate, bootstrap_ci
from interp.sites import sort_sites
from probes.boc import PooledRows, boc_probe, boc_targets, lambda_grid
from probes.ctc import CtcItem, choose_frames_per_row, ctc_probe
from probes.ridge import RidgeAccumulator, RidgeResult, fit_ridge, item_folds
from probes.targets import encode_chars, energy_db, pitch_track

__all__ = ["PROBES", "ProbeName", "ProbeReport", "ProbeScore", "run_probes"]

log = logging.getLogger(__name__)

ProbeName = Literal["energy", "pitch", "ctc", "boc"]
PROBES: tuple[ProbeName, ...] = ("energy", "pitch", "ctc", "boc")

_BATCH_BYTES = 128 << 20  # float32 rows per streamed batch, before the float64 copy of the accumulators
_N_BOOT = 1000


@dataclass(frozen=True)
class ProbeScore:
    """One probe at one site: held-out score, its 95 % bootstrap interval, held-out items scored, details.

    score is R² (energy, pitch, boc) or 1 − CER (ctc). extra holds λ and CV R² for ridge probes, the
    voiced share of audio rows for pitch, r and example decodes for CTC.
    """

    site: str
    probe: ProbeName
    score: float
    low: float
    high: float
    n_items: int
    extra: dict[str, Any]


def _json_safe(value: Any) -> Any:
    """NaN and inf become None (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class ProbeReport:
    """Every probe at every site of one cache, with the item split they share."""

    model: str
    cache: str
    sites: tuple[str, ...]
    probes: tuple[ProbeName, ...]
    seed: int
    n_folds: int
    test_fraction: float
    train_items: tuple[str, ...]
    test_items: tuple[str, ...]
    scores: tuple[ProbeScore, ...]

    def score(self, site: str, probe: ProbeName) -> ProbeScore:
        """The score of `probe` at `site`."""
        for entry in self.scores:
            if entry.site == site and entry.probe == probe:
                return entry
        raise InterpError(f"no {probe} score at site {site!r}; this report has sites {', '.join(self.sites)} "
                          f"and probes {', '.join(self.probes)}")

    def to_dict(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """JSON-ready record: the report plus `provenance` (interp.provenance.provenance(...)); NaN → null."""
        return _json_safe({**asdict(self), "provenance": provenance})

    def to_json(self, provenance: dict[str, Any]) -> str:
        """`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(provenance), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ProbeReport:
        """Read back a `to_dict` record (its provenance is not part of the report)."""
        try:
            scores = tuple(ProbeScore(s["site"], s["probe"], _float(s["score"]), _float(s["low"]), _float(s["high"]),
                                      int(s["n_items"]), dict(s["extra"])) for s in record["scores"])
            return cls(str(record["model"]), str(record["cache"]), tuple(record["sites"]), tuple(record["probes"]),
                       int(record["seed"]), int(record["n_folds"]), float(record["test_fraction"]),
                       tuple(record["train_items"]), tuple(record["test_items"]), scores)
        except (KeyError, TypeError, ValueError) as error:
            raise InterpError(f"not a probe report: {error!r}") from error


@dataclass
class _Plan:
    """What every site shares: the item split, the per-row targets and the CTC r.

    Item arrays are indexed like cache.items; per-item target arrays cover all of the item's rows in cache
    order (NaN where a row has no target: text rows, unvoiced rows, spans outside the wave).
    """

    ids: list[str]
    is_train: np.ndarray  # (items,) bool
    test: np.ndarray  # (test items,) int64 positions in cache.items
    train: np.ndarray  # (train items,) int64
    fold: np.ndarray  # (items,) int64, -1 outside training
    targets: dict[str, list[np.ndarray]]  # "energy" / "pitch" → per item (rows_i,) float64
    labels: list[np.ndarray]
    counts: np.ndarray  # (items, 28) bag of characters
    voiced_share: float
    frames_per_row: int


def _check_request(cache: ActivationCache, probes: Sequence[str], sites: Sequence[str] | None, n_folds: int,
                   test_fraction: float) -> list[str]:
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes or len(set(probes)) != len(probes):
        raise InterpError(f"probes {list(probes)!r}: choose distinct names among {', '.join(PROBES)}")
    chosen = list(cache.sites if sites is None else sites)
    missing = [s for s in chosen if s not in cache.sites]
    if missing or not chosen:
        raise InterpError(f"unknown site {missing[0] if missing else '(none given)'!r}: this cache has "
                          f"{', '.join(sort_sites(cache.sites))} (list them: interp cache info CACHE)")
    if n_folds < 2:
        raise InterpError(f"n_folds must be at least 2, got {n_folds}")
    if not 0.0 < test_fraction < 1.0:
        raise InterpError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    return sort_sites(list(dict.fromkeys(chosen)))


def _split(n_items: int, with_audio: np.ndarray, test_fraction: float, n_folds: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded item split of the items that have audio rows: (train, test) positions, sorted."""
    candidates = np.flatnonzero(with_audio)
    n_test = max(2, int(round(test_fraction * candidates.size)))
    n_train = candidates.size - n_test
    if n_train < max(n_folds, 2):
        raise InterpError(f"{candidates.size} items with audio rows are too few: {n_test} are held out and "
                          f"{n_folds}-fold cross-validation needs at least {n_folds} more (use fewer folds)")
    order = np.random.default_rng(seed).permutation(candidates)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _acoustic_targets(set_items: list[Any], spoken_set: SpokenSet, table: dict[str, np.ndarray],
                      bounds: np.ndarray, wanted: tuple[str, ...]) -> tuple[dict[str, list[np.ndarray]], float]:
    """Energy (dB) and log-F0 per row of each item, NaN off audio rows; and the voiced share of audio rows.

    One waveform read and one Praat track per item, whatever the number of sites.
    """
    targets: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    voiced = audio_total = 0
    for i, item in enumerate(set_items):
        rows = slice(bounds[i], bounds[i + 1])
        audio = table["kind"][rows] == AUDIO
        values = {name: np.full(audio.size, np.nan) for name in wanted}
        if audio.any():
            start, end = table["t_start"][rows][audio], table["t_end"][rows][audio]
            if not (np.isfinite(start).all() and np.isfinite(end).all()):
                raise InterpError(f"item {item.id!r}: audio rows without a time span in the cache; re-extract it")
            wave = spoken_set.load_audio(item)
            if "energy" in values:
                values["energy"][audio] = energy_db(wave, SAMPLE_RATE, start, end)
            if "pitch" in values:
                values["pitch"][audio] = pitch_track(wave, SAMPLE_RATE).log_hz(start, end)
                voiced, audio_total = voiced + int(np.isfinite(values["pitch"]).sum()), audio_total + int(audio.sum())
        for name in wanted:
            targets[name].append(values[name])
    return targets, voiced / audio_total if audio_total else float("nan")


def _plan(cache: ActivationCache, spoken_set: SpokenSet, probes: Sequence[str], *, n_folds: int,
          test_fraction: float, seed: int, frames_per_row: int | None) -> _Plan:
    table = cache.row_table()
    n_items = len(cache.items)
    if not (table["kind"] == AUDIO).any():
        raise InterpError(f"{cache.path}: the cache holds no audio rows (positions {cache.positions!r}); the probes "
                          "read audio positions: extract with --positions audio or all")
    set_items = set_items_of(cache, spoken_set)
    bounds = np.searchsorted(table["item"], np.arange(n_items + 1))
    audio_rows = np.bincount(table["item"][table["kind"] == AUDIO], minlength=n_items)
    train, test = _split(n_items, audio_rows > 0, test_fraction, n_folds, seed)
    is_train = np.zeros(n_items, dtype=bool)
    is_train[train] = True
    fold = np.full(n_items, -1, dtype=np.int64)
    fold[train] = item_folds(train, n_folds, seed)
    wanted = tuple(name for name in ("energy", "pitch") if name in probes)
    targets, voiced_share = _acoustic_targets(set_items, spoken_set, table, bounds, wanted)
    labels = [encode_chars(meta.transcript) for meta in cache.items]
    if "ctc" in probes and frames_per_row is None:
        frames_per_row = choose_frames_per_row(audio_rows[train].tolist(), [labels[i] for i in train])
    if frames_per_row is not None and frames_per_row < 1:
        raise InterpError(f"CTC frames per row must be at least 1, got {frames_per_row}")
    return _Plan([meta.id for meta in cache.items], is_train, test, train, fold, targets, labels,
                 boc_targets([meta.transcript for meta in cache.items]), voiced_share, frames_per_row or 0)


def _batches(cache: ActivationCache, site: str, items: np.ndarray | None, ids: list[str]
             ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Stream (x, item per row, is-audio per row, distinct items) over whole items of one site."""
    batch_rows = max(1, _BATCH_BYTES // (4 * cache.dims[site]))
    selection = None if items is None else [ids[i] for i in items]
    for x, rows in cache.iter_batches(site, batch_rows, items=selection):
        yield x, rows["item"], rows["kind"] == AUDIO, np.unique(rows["item"])


def _ctc_items(x: np.ndarray, item: np.ndarray, audio: np.ndarray, distinct: np.ndarray, plan: _Plan
               ) -> Iterator[CtcItem]:
    """Each listed item's audio rows of a batch (an item's rows are contiguous: batches follow cache order)."""
    starts, ends = np.searchsorted(item, distinct, side="left"), np.searchsorted(item, distinct, side="right")
    for i, start, end in zip(distinct, starts, ends):
        yield CtcItem(plan.ids[i], x[start:end][audio[start:end]], plan.labels[i])


@dataclass
class _TrainPass:
    """What one pass over a site's rows collects: ridge statistics, pooled rows, CTC training items."""

    ridge: dict[str, RidgeAccumulator]
    pooled: PooledRows
    ctc_items: list[CtcItem]


def _train_pass(cache: ActivationCache, site: str, plan: _Plan, probes: Sequence[str], n_folds: int) -> _TrainPass:
    collected = _TrainPass({name: RidgeAccumulator(n_folds) for name in plan.targets},
                           PooledRows(len(plan.ids), cache.dims[site]), [])
    needs_all = "boc" in probes
    for x, item, audio, distinct in _batches(cache, site, None if needs_all else plan.train, plan.ids):
        train_rows = audio & plan.is_train[item]
        for name, acc in collected.ridge.items():
            y = np.concatenate([plan.targets[name][i] for i in distinct])
            keep = train_rows & np.isfinite(y)
            acc.update(x[keep], y[keep], plan.fold[item[keep]])
        if needs_all:
            collected.pooled.update(x[audio], item[audio])
        if "ctc" in probes:
            collected.ctc_items.extend(_ctc_items(x, item, audio, distinct[plan.is_train[distinct]], plan))
    return collected


def _pooled_r2(n: np.ndarray, total: np.ndarray, squares: np.ndarray, sse: np.ndarray) -> float:
    """R² of rows pooled over items from per-item sums (see module docstring); NaN when the targets are constant."""
    count = n.sum()
    sst = squares.sum() - total.sum() ** 2 / count if count else 0.0
    return float(1.0 - sse.sum() / sst) if sst > 0 else float("nan")


def _ridge_scores(cache: ActivationCache, site: str, plan: _Plan, models: dict[str, RidgeResult], seed: int
                  ) -> dict[str, tuple[Estimate, int]]:
    """Held-out R² (with item bootstrap) of each fitted row-level probe, and its held-out row count."""
    centre = {name: np.nanmean(np.concatenate([plan.targets[name][i] for i in plan.test])) for name in models}
    sums = {name: np.zeros((len(plan.ids), 4)) for name in models}  # n, Σy, Σy², SSE per item
    for x, item, audio, distinct in _batches(cache, site, plan.test, plan.ids):
        for name, model in models.items():
            y = np.concatenate([plan.targets[name][i] for i in distinct]) - centre[name]
            keep = audio & np.isfinite(y)
            residual = y[keep] - (model.predict(x[keep]) - centre[name])
            for column, values in enumerate((np.ones(residual.size), y[keep], y[keep] ** 2, residual ** 2)):
                sums[name][:, column] += np.bincount(item[keep], weights=values, minlength=len(plan.ids))
    out = {}
    for name, table in sums.items():
        scored = table[plan.test][table[plan.test, 0] > 0]
        if scored[:, 0].sum() < 2:
            raise InterpError(f"{site}: the held-out items have fewer than 2 rows with a {name} target")
        out[name] = (bootstrap_ci(_pooled_r2, *scored.T, n_boot=_N_BOOT, seed=seed), int(scored[:, 0].sum()))
    return out


def _score(site: str, probe: ProbeName, estimate: Estimate, extra: dict[str, Any]) -> ProbeScore:
    return ProbeScore(site, probe, estimate.value, estimate.low, estimate.high, estimate.n, extra)


def _ctc_test_items(cache: ActivationCache, site: str, plan: _Plan) -> Iterator[CtcItem]:
    for x, item, audio, distinct in _batches(cache, site, plan.test, plan.ids):
        yield from _ctc_items(x, item, audio, distinct, plan)


def _probe_site(cache: ActivationCache, site: str, plan: _Plan, probes: Sequence[ProbeName], n_folds: int,
                seed: int) -> list[ProbeScore]:
    collected = _train_pass(cache, site, plan, probes, n_folds)
    models = {name: fit_ridge(acc, lambda_grid(sum(float(np.trace(m.cxx)) for m in acc.folds), acc.n_features))
              for name, acc in collected.ridge.items()}
    ridge = _ridge_scores(cache, site, plan, models, seed) if models else {}
    scores = []
    for probe in probes:
        if probe in ridge:
            estimate, test_rows = ridge[probe]
            extra: dict[str, Any] = {"lambda": models[probe].alpha, "cv_r2": models[probe].best_score,
                                     "n_train_rows": models[probe].n_rows, "n_test_rows": test_rows}
            if probe == "pitch":
                extra["voiced_share"] = plan.voiced_share
            scores.append(_score(site, probe, estimate, extra))
        elif probe == "boc":
            result = boc_probe(collected.pooled.means(plan.train), plan.counts[plan.train],
                               collected.pooled.means(plan.test), plan.counts[plan.test], n_folds=n_folds, seed=seed)
            scores.append(_score(site, probe, result.score, {"lambda": result.alpha, "cv_r2": result.cv_r2,
                                                             "n_varying_outputs": result.n_varying_outputs,
                                                             "n_train_items": result.n_train_items}))
        else:
            result = ctc_probe(collected.ctc_items, _ctc_test_items(cache, site, plan),
                               frames_per_row=plan.frames_per_row, seed=seed)
            scores.append(_score(site, probe, result.score, {
                "r": result.frames_per_row, "cer": result.cer, "epochs": result.epochs,
                "best_epoch": result.best_epoch, "n_train_items": result.n_train_items,
                "examples": [asdict(example) for example in result.examples]}))
    return scores


def run_probes(cache: ActivationCache, spoken_set: SpokenSet, *, probes: Sequence[ProbeName] = PROBES,
               sites: Sequence[str] | None = None, n_folds: int = 5, seed: int = 0, test_fraction: float = 0.2,
               ctc_frames_per_row: int | None = None,
               progress: Callable[[int, int, str], None] | None = None) -> ProbeReport:
    """Run `probes` at `sites` (all by default, in layer order) of `cache`, with targets from `spoken_set`.

    One seeded split holds out `test_fraction` of the items (at least 2) for every probe and site; ridge λ
    is chosen by `n_folds`-fold CV over the training items. ctc_frames_per_row fixes the CTC r (default:
    the smallest that fits every training item, see `probes.ctc.choose_frames_per_row`). progress, if
    given, is called as progress(sites done, sites in all, site) after each site. The same arguments give
    the same report, and a site's scores do not depend on which other sites or probes run beside it.

    Memory: the cache's row table, the targets (a few float64 per row), one streamed batch (~128 MB), and
    for CTC the training items' audio rows of one site. Raises InterpError for an unknown site or probe, a
    cache without audio rows, a spoken set lacking the cache's items, or too few items to split.
    """
    ordered = _check_request(cache, probes, sites, n_folds, test_fraction)
    probes = tuple(name for name in PROBES if name in probes)  # reports list probes in one order
    plan = _plan(cache, spoken_set, probes, n_folds=n_folds, test_fraction=test_fraction, seed=seed,
                 frames_per_row=ctc_frames_per_row)
    log.info("probing %d sites of %s: %d training and %d held-out items", len(ordered), cache.path,
             plan.train.size, plan.test.size)
    scores: list[ProbeScore] = []
    for done, site in enumerate(ordered, start=1):
        scores.extend(_probe_site(cache, site, plan, probes, n_folds, seed))
        log.info("%s: %s", site, ", ".join(f"{s.probe} {s.score:.3f}" for s in scores[-len(probes):]))
        if progress is not None:
            progress(done, len(ordered), site)
    return ProbeReport(cache.model, str(cache.path), tuple(ordered), probes, seed, n_folds, test_fraction,
                       tuple(plan.ids[i] for i in plan.train), tuple(plan.ids[i] for i in plan.test), tuple(scores))
