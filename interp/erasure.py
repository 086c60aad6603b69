"""LEACE concept erasure: fit on cached audio rows, apply with hooks during the forward pass and generation.

Fitting
-------
`fit_eraser` streams an activation cache site by site into concept-erasure's `LeaceFitter` (float64 running
statistics; `update(x, z)` per batch of whole items), on the cache's AUDIO rows only, and keeps the fitted
`LeaceEraser` of every site: x ↦ x − ((x − b) Rᵀ) Lᵀ with L = proj_left (d, k), R = proj_right (k, d),
b = bias (the mean of x). The library's defaults are kept (affine, shrinkage, svd_tol 0.01, trace constraint).

Concepts (the label z of each audio row, whose span is the row's [t_start, t_end) in the item's audio):

* ``chars`` — the characters spoken during the row: the bag of characters (28 counts: space, apostrophe,
  a–z; `probes.targets.bag_of_characters`) of the words whose timing (`Item.words`) overlaps the row's
  span, joined by spaces. Rows overlapping no word (silence) are all zeros. Rank ≤ 28, far below d.
* ``text`` — proxy token identity: the word with the largest overlap with the row's span (ties: the earlier
  word), and of it the FIRST token the model's tokenizer gives it inside the transcript (tokenised with
  offsets; a word not found there is tokenised alone after a space). The `text_classes` (K, default 32)
  most frequent tokens over the labelled rows are classes, everything else is "other" (rarer tokens and
  silent rows): one-hot with K + 1 columns, rank ≤ K.
* ``boc`` — the item's bag of characters (28 counts of its whole transcript), the same on all its rows. Rank ≤ 28.
* ``energy`` — RMS level in dB of the row's span (`probes.targets.energy_db`), z-scored over the fitted rows;
  real-valued, rank ≤ 1.
* ``pitch`` — Praat log-F0 of the row's span (`probes.targets.pitch_track`, median of voiced frames), cut into
  `pitch_bins` (default 8) quantile bins over the voiced rows, plus one class for unvoiced rows: one-hot,
  rank ≤ `pitch_bins`. `pitch_bins=0` instead fits the z-scored log-F0 of voiced rows only (rank ≤ 1).
* ``random`` — the control: a seeded random subspace with the same rank per site as the concept named by
  `match` (default ``text``; an int gives the rank directly). Its basis U (d × r) is orthonormal, from a
  Gaussian matrix (seed, site), and it is removed as an orthogonal projection in the WHITENED space of the
  site's rows (W = Σ^-1/2 from the same shrunk covariance LEACE uses): x ↦ x − W⁺UUᵀW(x − μ). LEACE is itself
  the orthogonal projection, in that whitened space, onto the complement of the concept's r directions, so
  both remove exactly r of the d whitened dimensions (share r/d): the only difference is which directions.
  ``random_space="raw"`` removes r random directions of the raw space instead (x − UUᵀ(x − μ)).

Rows of items without word timings (natural recordings) have no `chars`/`text` label and are left out of
the fit (their count is recorded); fit those concepts on a set with timings (the TTS sets have them). Other
rows with no label (energy of an empty span; unvoiced rows under `pitch_bins=0`) are left out the same way.

The rank of an eraser at a site is the number of concept directions it removes: the singular values of the
whitened cross-covariance above svd_tol (for ``random``: r). When the library's trace constraint mixes the
LEACE projection with the orthogonal one, the stored factors may have up to 2r columns; `trace_constrained`
says so.

Applying
--------
`apply_eraser(model, eraser)` is a context manager that puts forward hooks on the fitted sites: the site's
output (`llm.layers.{i}`: the residual stream after decoder layer i; `llm.embed`: the input of layer 0) is
replaced by its erased value at AUDIO positions (``positions="audio"``, the default: the rows the eraser was
fitted on) or at every position (``positions="all"``), in every forward pass, so in every generation step.
Audio-only sites (`projector`, `audio.layers.{i}`) are erased on every row. The erased values are computed
in float32 (float64 for float64 activations) and cast back to the hooked tensor's dtype and device; the other
positions are passed through bit for bit (`torch.where`). Sites of rank 0 get no hook.

How audio positions reach the hooks: while the context is open the adapter's own entry points are wrapped
on the instance: `logits(batch)` runs with `batch.audio_mask` in force, and `score_choices` / `generate` run
with the mask of the batch they build through `prepare` / `_encode`. A pre-hook on the first decoder layer
reads the past length of the forward pass (`cache.get_seq_length()` of the KV cache it gets; 0 without one),
so a pass over positions [past, past + seq) uses columns past … past + seq of the mask, and positions beyond
the prompt are text. Hence: the prefill pass of a generation erases the prompt's audio positions; cached
decoding steps (seq 1, past ≥ prompt length) and the choices scored from the prompt's repeated KV cache
(any batch, past ≥ prompt length) hold only text and are left alone; a loop re-running
the whole sequence without a cache erases the same audio positions at every step (the same result). Under
``positions="all"`` every position of every pass is erased, generated tokens included: fitting on audio rows
and applying to text rows is out of distribution, so that must be asked for. A forward pass that reaches an
audio-position hook outside those entry points (e.g. `model.model(**batch.inputs)` called directly, or
another system sharing the same LLM modules, as the mini stack's cascades do) raises InterpError; use
``with active.batch(batch):`` for direct calls.

File format
-----------
One safetensors file (no pickle): per site the tensors ``<site>/proj_left`` (d, k), ``<site>/proj_right``
(k, d) and ``<site>/bias`` (d,) as float32 (LeaceEraser's fields, k = stored columns), and in the file's
metadata ``format`` = ``cascade-interp eraser``, ``format_version`` and ``erasure``: one JSON document with
the concept and its definition, per-site d, rank, share and rows, the model and its info, the cache path,
header digest and dataset, the fitted rows and default positions, the fitter's settings, package versions
and provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from activations import AUDIO, ActivationCache
from activations.extract import set_items_of
from interp.data.audio import SAMPLE_RATE
from interp.data.manifest import SpokenSet
from interp.errors import InterpError
from interp.models.base import Site
from interp.sites import SiteError, describe_sites, expand_sites
from probes.targets import CHARSET, bag_of_characters, energy_db, pitch_track

__all__ = [
    "CONCEPTS", "ConceptName", "Positions", "FORMAT", "FORMAT_VERSION", "ConceptLabels", "SiteEraser", "Eraser",
    "SITE_CHARS", "ActiveErasure", "concept_labels", "fit_eraser", "apply_eraser", "evaluate_erasure",
]

_log = logging.getLogger(__name__)

ConceptName = Literal["chars", "text", "boc", "energy", "pitch", "random"]
CONCEPTS: tuple[ConceptName, ...] = ("chars", "text", "boc", "energy", "pitch", "random")
Positions = Literal["audio", "all"]
FORMAT = "cascade-interp eraser"
FORMAT_VERSION = 1
SITE_CHARS = tuple(CHARSET[1:])
"""The 28 columns of the character concepts: space, apostrophe, a–z."""

_BATCH_BYTES = 64 << 20  # float32 rows per streamed batch
_FITTER = {"method": "leace", "affine": True, "constrain_cov_trace": True, "shrinkage": True, "svd_tol": 0.01,
           "dtype": "float64"}
_DEFINITIONS = {
    "chars": "bag of characters (28 counts) of the words whose timing overlaps the row's span; silence = zeros",
    "text": "first model token of the word overlapping the row's span most; K most frequent tokens + other "
            "(rarer tokens and silence), one-hot",
    "boc": "bag of characters (28 counts) of the item's transcript, on each of its rows",
    "energy": "RMS level (dB) of the row's span, z-scored",
    "pitch": "Praat log-F0 of the row's span in quantile bins over voiced rows + unvoiced class, one-hot "
             "(bins 0: z-scored log-F0 of voiced rows)",
    "random": "seeded random orthonormal subspace of the matched concept's rank, removed in the whitened (or raw) "
              "space",
}


# ---------------------------------------------------------------------------------------------------------------
# concept labels


@dataclass(frozen=True)
class ConceptLabels:
    """The label of every row of a cache (in `ActivationCache.read` order) for one concept.

    z: (rows, k) float64 (one-hot for categorical concepts); keep: (rows,) bool, the rows the eraser is fitted
    on (audio rows with a label); columns: name of each column of z; info: counts for the eraser's metadata.
    """

    concept: str
    kind: Literal["categorical", "real"]
    z: np.ndarray
    keep: np.ndarray
    columns: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def _overlaps(start: np.ndarray, end: np.ndarray, words: Sequence[Any]) -> np.ndarray:
    """(rows, words) seconds of overlap between each row's span and each word's timing."""
    w_start = np.array([w.t_start for w in words], dtype=np.float64)
    w_end = np.array([w.t_end for w in words], dtype=np.float64)
    return np.clip(np.minimum(end[:, None], w_end[None, :]) - np.maximum(start[:, None], w_start[None, :]), 0, None)


def _word_first_tokens(tokenizer: Any, transcript: str, words: Sequence[Any]) -> list[int]:
    """The first token of each timed word as the tokenizer splits the transcript (offsets); a word not found in
    the transcript (or a tokenizer without offsets) is tokenised alone after a space."""
    def alone(text: str) -> int:
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else -1

    try:
        encoded = tokenizer(transcript, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return [alone(word.text) for word in words]
    lowered, cursor, out = transcript.lower(), 0, []
    for word in words:
        at = lowered.find(word.text.lower(), cursor) if word.text else -1
        if at < 0:
            out.append(alone(word.text))
            continue
        stop = at + len(word.text)
        cursor = stop
        token = next((tid for tid, (a, b) in zip(ids, offsets) if b > at and a < stop), None)
        out.append(int(token) if token is not None else alone(word.text))
    return out


def _token_name(tokenizer: Any, token: int) -> str:
    try:
        return f"{token}:{tokenizer.convert_ids_to_tokens(int(token))}"
    except Exception:  # noqa: BLE001 - a name is only a label in the metadata
        return str(token)


def _zscore(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values)
    if keep.any():
        mean, std = values[keep].mean(), values[keep].std()
        out[keep] = (values[keep] - mean) / (std if std > 0 else 1.0)
    return out


def concept_labels(cache: ActivationCache, spoken_set: SpokenSet, concept: str, *, text_classes: int = 32,
                   pitch_bins: int = 8, tokenizer: Any = None, items: Sequence[str] | None = None) -> ConceptLabels:
    """Labels of every audio row of `cache` for `concept` (chars, text, boc, energy, pitch; see the module
    docstring), aligned by each row's [t_start, t_end) span. `tokenizer` is needed for ``text`` only.
    items: ids of the items to label (default all); rows of other items are not kept, and the text classes,
    pitch bins and z-scores are computed over the labelled items only. Rows are those of `cache.read(site)`.
    Raises InterpError for an unknown concept, a set that does not hold the cache's items, a cache without
    audio rows, or a concept that no row has a label for."""
    if concept not in CONCEPTS or concept == "random":
        raise InterpError(f"unknown concept {concept!r}; choose one of {', '.join(c for c in CONCEPTS if c != 'random')}"
                          " (or random, matched to one of them)")
    if text_classes < 1:
        raise InterpError(f"text classes must be at least 1, got {text_classes}")
    if pitch_bins < 0:
        raise InterpError(f"pitch bins must be 0 (real-valued) or more, got {pitch_bins}")
    table = cache.row_table()
    audio = table["kind"] == AUDIO
    if not audio.any():
        raise InterpError(f"{cache.path}: the cache holds no audio rows (positions {cache.positions!r}); erasers are "
                          "fitted on audio positions: extract with --positions audio or all")
    set_items = set_items_of(cache, spoken_set)
    bounds = np.searchsorted(table["item"], np.arange(len(set_items) + 1))
    n_rows = audio.size
    if items is None:
        chosen = set(range(len(set_items)))
    else:
        position = {meta.id: p for p, meta in enumerate(cache.items)}
        unknown = [i for i in items if i not in position]
        if unknown:
            raise InterpError(f"item {unknown[0]!r} is not in the cache {cache.path}")
        chosen = {position[i] for i in items}
    labelled_items = [(i, item) for i, item in enumerate(set_items) if i in chosen]
    keep = np.zeros(n_rows, dtype=bool)
    info: dict[str, Any] = {"audio_rows": int(audio.sum())}

    def rows_of(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = np.arange(bounds[i], bounds[i + 1])[audio[bounds[i]:bounds[i + 1]]]
        start = table["t_start"][index].astype(np.float64)
        end = table["t_end"][index].astype(np.float64)
        if index.size and not (np.isfinite(start).all() and np.isfinite(end).all()):
            raise InterpError(f"item {set_items[i].id!r}: audio rows without a time span in the cache; re-extract it")
        return index, start, end

    if concept in ("chars", "boc"):
        z = np.zeros((n_rows, len(SITE_CHARS)))
        unaligned = 0
        for i, item in labelled_items:
            index, start, end = rows_of(i)
            if concept == "boc":
                z[index] = bag_of_characters(item.transcript)
                keep[index] = True
            elif not item.words:
                unaligned += index.size
            elif index.size:
                bags = np.stack([bag_of_characters(word.text) for word in item.words])
                hit = _overlaps(start, end, item.words) > 0
                z[index] = hit.astype(np.float64) @ bags
                z[index, 0] += np.maximum(hit.sum(axis=1) - 1, 0)  # the spaces between the joined words
                keep[index] = True
        if concept == "chars":
            info["rows_without_word_timing"] = unaligned
        columns, kind = SITE_CHARS, "real"
    elif concept == "text":
        if tokenizer is None:
            raise InterpError("the text concept needs the model's tokenizer")
        token = np.full(n_rows, -2, dtype=np.int64)  # -2: no label, -1: silence
        unaligned = 0
        for i, item in labelled_items:
            index, start, end = rows_of(i)
            if not item.words:
                unaligned += index.size
                continue
            if not index.size:
                continue
            first = np.array(_word_first_tokens(tokenizer, item.transcript, item.words), dtype=np.int64)
            overlap = _overlaps(start, end, item.words)
            best = overlap.argmax(axis=1)  # the first maximum: ties go to the earlier word
            token[index] = np.where(overlap.max(axis=1) > 0, first[best], -1)
            keep[index] = True
        spoken = token[keep & (token >= 0)]
        ids, counts = np.unique(spoken, return_counts=True)
        order = np.lexsort((ids, -counts))[:text_classes]
        classes = ids[order]
        column = {int(t): c for c, t in enumerate(classes)}
        z = np.zeros((n_rows, classes.size + 1))
        labelled = np.flatnonzero(keep)
        z[labelled, [column.get(int(t), classes.size) for t in token[labelled]]] = 1.0
        columns = tuple(_token_name(tokenizer, int(t)) for t in classes) + ("other",)
        info.update(rows_without_word_timing=unaligned, silent_rows=int((token[keep] == -1).sum()),
                    distinct_tokens=int(ids.size), class_rows=[int(c) for c in counts[order]],
                    other_rows=int(z[labelled, -1].sum()))
        kind = "categorical"
    else:  # energy, pitch
        values = np.full(n_rows, np.nan)
        for i, item in labelled_items:
            index, start, end = rows_of(i)
            if not index.size:
                continue
            wave = spoken_set.load_audio(item)
            if concept == "energy":
                values[index] = energy_db(wave, SAMPLE_RATE, start, end)
            else:
                values[index] = pitch_track(wave, SAMPLE_RATE).log_hz(start, end)
            keep[index] = True
        voiced = keep & np.isfinite(values)
        if concept == "energy" or pitch_bins == 0:
            keep = voiced
            z, columns, kind = _zscore(values, keep)[:, None], (concept,), "real"
        else:
            edges = np.quantile(values[voiced], np.linspace(0, 1, pitch_bins + 1)[1:-1]) if voiced.any() else []
            z = np.zeros((n_rows, pitch_bins + 1))
            labelled = np.flatnonzero(keep)
            z[labelled, np.where(voiced[labelled], np.digitize(np.nan_to_num(values[labelled]), edges), pitch_bins)] = 1
            columns = tuple(f"log-F0 bin {b}" for b in range(pitch_bins)) + ("unvoiced",)
            info["bin_edges_log_hz"] = [float(e) for e in edges]
            kind = "categorical"
        info["voiced_rows"] = int(voiced.sum())
    keep &= audio
    if not keep.any():
        hint = (" (no item has word timings: fit on a TTS set, whose items record them, or use concept boc)"
                if concept in ("chars", "text") else "")
        raise InterpError(f"no audio row of {cache.path} has a {concept} label{hint}")
    info["rows"] = int(keep.sum())
    return ConceptLabels(concept, kind, z, keep, tuple(columns), info)


# ---------------------------------------------------------------------------------------------------------------
# erasers


@dataclass(frozen=True)
class SiteEraser:
    """The eraser of one site: x ↦ x − ((x − bias) @ proj_rightᵀ) @ proj_leftᵀ (concept-erasure's LeaceEraser).

    proj_left (d, k), proj_right (k, d), bias (d,): float32 on the CPU. rank: concept directions removed
    (≤ k); rows: rows it was fitted on; trace_constrained: the library mixed in the orthogonal projection.
    """

    proj_left: Tensor
    proj_right: Tensor
    bias: Tensor
    rank: int
    rows: int = 0
    trace_constrained: bool = False

    @property
    def d(self) -> int:
        return int(self.proj_left.shape[0])

    @property
    def share(self) -> float:
        """Share of the site's d dimensions the eraser removes (rank / d)."""
        return self.rank / self.d

    def __call__(self, x: Tensor) -> Tensor:
        """Erase (..., d) rows; computed in float32 (float64 for float64 input), returned in x's dtype."""
        work = torch.promote_types(x.dtype, torch.float32)
        left, right, bias = (t.to(device=x.device, dtype=work) for t in (self.proj_left, self.proj_right, self.bias))
        y = x.to(work)
        return (y - ((y - bias) @ right.mT) @ left.mT).to(x.dtype)

    def as_leace(self) -> Any:
        """The same map as a concept_erasure.LeaceEraser."""
        from concept_erasure import LeaceEraser

        return LeaceEraser(self.proj_left, self.proj_right, self.bias)


def _tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Eraser:
    """Per-site erasers of one concept, fitted on one model's cache; `meta` is the file's JSON metadata."""

    concept: str
    sites: dict[str, SiteEraser]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        return self.meta.get("model")

    def tensors(self) -> dict[str, Tensor]:
        out = {}
        for name, site in self.sites.items():
            out[f"{name}/proj_left"] = site.proj_left.float().contiguous()
            out[f"{name}/proj_right"] = site.proj_right.float().contiguous()
            out[f"{name}/bias"] = site.bias.float().contiguous()
        return out

    def digest(self) -> str:
        """sha256 of the concept and the tensors: two erasers with the same digest erase the same way."""
        return hashlib.sha256((self.concept + _tensor_digest(self.tensors())).encode()).hexdigest()

    def summary(self) -> list[dict[str, Any]]:
        """Per site: d, rank, share of d removed, stored columns, rows fitted, trace constraint."""
        return [{"site": name, "d": s.d, "rank": s.rank, "share": s.share, "stored_rank": int(s.proj_left.shape[1]),
                 "rows": s.rows, "trace_constrained": s.trace_constrained} for name, s in self.sites.items()]

    def describe(self) -> str:
        """A text table: the concept, then per site its rank and the share of d it removes."""
        lines = [f"eraser: concept {self.concept} ({self.meta.get('method', 'leace')}), model {self.model}, "
                 f"{len(self.sites)} sites"]
        lines.append(f"{'site':<20s} {'d':>6s} {'rank':>5s} {'share of d':>10s} {'rows':>8s}")
        for entry in self.summary():
            mark = " (trace-constrained)" if entry["trace_constrained"] else ""
            lines.append(f"{entry['site']:<20s} {entry['d']:6d} {entry['rank']:5d} {entry['share']:10.2%} "
                         f"{entry['rows']:8d}{mark}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write the safetensors file (tensors + JSON metadata); returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "concept": {**self.meta.get("concept", {}), "name": self.concept},
                "sites": {entry.pop("site"): entry for entry in self.summary()}}
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.tensors(), str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                                      "erasure": json.dumps(meta, allow_nan=False, default=str)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Eraser:
        """Read an eraser file; raises InterpError (one line) for a missing, foreign or inconsistent file."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise InterpError(f"no eraser file at {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                if header.get("format") != FORMAT:
                    raise InterpError(f"{path} is not an eraser file (no '{FORMAT}' metadata)")
                if header.get("format_version") != str(FORMAT_VERSION):
                    raise InterpError(f"{path}: eraser format version {header.get('format_version')!r}; this version "
                                      f"reads {FORMAT_VERSION} (fit the eraser again)")
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except SafetensorError as error:
            raise InterpError(f"{path} is not a readable safetensors file ({error})") from None
        try:
            meta = json.loads(header["erasure"])
            sites = {}
            for name, entry in meta["sites"].items():
                left, right, bias = (tensors[f"{name}/{key}"] for key in ("proj_left", "proj_right", "bias"))
                d, k = left.shape
                if right.shape != (k, d) or bias.shape != (d,) or d != int(entry["d"]):
                    raise ValueError(f"site {name}: tensor shapes {tuple(left.shape)}, {tuple(right.shape)}, "
                                     f"{tuple(bias.shape)} disagree with d {entry['d']}")
                sites[name] = SiteEraser(left, right, bias, rank=int(entry["rank"]), rows=int(entry.get("rows", 0)),
                                         trace_constrained=bool(entry.get("trace_constrained", False)))
            concept = str(meta["concept"]["name"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            raise InterpError(f"{path}: malformed eraser file ({error})") from None
        return cls(concept, sites, meta)


# ---------------------------------------------------------------------------------------------------------------
# fitting


def _whitening(fitter: Any) -> tuple[Tensor, Tensor]:
    """W = Σ^-1/2 and W⁺ = Σ^1/2 of the fitter's (shrunk) covariance, with LeaceFitter's eigenvalue threshold."""
    sigma = fitter.sigma_xx
    eigenvalues, vectors = torch.linalg.eigh(sigma)
    mask = eigenvalues > (eigenvalues[-1] * sigma.shape[-1] * torch.finfo(eigenvalues.dtype).eps)
    eigenvalues = eigenvalues.clamp_min(0.0)
    w = vectors * torch.where(mask, eigenvalues.rsqrt(), 0.0) @ vectors.mH
    w_inv = vectors * torch.where(mask, eigenvalues.sqrt(), 0.0) @ vectors.mH
    return w, w_inv


def _leace_rank(fitter: Any) -> int:
    """Concept directions LEACE removes: singular values of W Σxz above svd_tol (via Σzx Σxx⁻¹ Σxz)."""
    sigma_xz = fitter.sigma_xz
    solved = torch.linalg.lstsq(fitter.sigma_xx, sigma_xz).solution
    values = torch.linalg.eigvalsh(sigma_xz.mT @ solved).clamp_min(0).sqrt()
    return int((values > fitter.svd_tol).sum())


def _compact(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the zero columns of the factors (LeaceFitter keeps z_dim or d columns, some of them zero)."""
    weight = left.norm(dim=0) * right.norm(dim=1)
    keep = weight > (weight.max() * 1e-10 if weight.numel() else 0)
    keep &= weight > 0
    return left[:, keep], right[keep]


def _site_eraser_from_fitter(fitter: Any, rows: int) -> SiteEraser:
    eraser = fitter.eraser
    d = fitter.x_dim
    mixed = fitter.z_dim < d and eraser.proj_left.shape[1] == d  # the trace constraint's SVD path
    left, right = _compact(eraser.proj_left, eraser.proj_right)
    rank = _leace_rank(fitter) if mixed else int(left.shape[1])
    return SiteEraser(left.float(), right.float(), eraser.bias.float(), rank=rank, rows=rows, trace_constrained=mixed)


def _random_site_eraser(fitter: Any, rank: int, *, seed: int, site: str, space: str, rows: int) -> SiteEraser:
    d = fitter.x_dim
    rank = min(rank, d)
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    basis, _ = torch.linalg.qr(torch.from_numpy(rng.standard_normal((d, rank))))
    bias = fitter.mean_x.clone()
    if rank == 0:
        left = right = torch.zeros(d, 0, dtype=torch.float64)
        return SiteEraser(left.float(), right.mT.float(), bias.float(), rank=0, rows=rows)
    if space == "whitened":
        w, w_inv = _whitening(fitter)
        left, right = w_inv @ basis, basis.mT @ w
    else:
        left, right = basis, basis.mT
    return SiteEraser(left.float(), right.float(), bias.float(), rank=rank, rows=rows)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("concept-erasure", "torch", "safetensors", "cascade-interp"):
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return out


def _model_tokenizer(cache: ActivationCache) -> Any:
    """The cache model's tokenizer (the text concept aligns words to its tokens)."""
    from interp.models.mini import load_tokenizer

    return load_tokenizer(cache.header.model_info.get("spec") or cache.model)


def fit_eraser(cache: ActivationCache | str | Path, spoken_set: SpokenSet | str | Path, concept: str,
               sites: Sequence[str] | str | None = None, *, match: str | int | None = None, text_classes: int = 32,
               pitch_bins: int = 8, random_space: Literal["whitened", "raw"] = "whitened", seed: int = 0,
               tokenizer: Any = None, items: Sequence[str] | None = None, batch_rows: int | None = None,
               progress: Callable[[int, int, str], None] | None = None) -> Eraser:
    """Fit an eraser of `concept` at `sites` (a list, a site spec such as ``llm.layers.0,4,8`` or None for every
    cached site) on the cache's audio rows, with labels from `spoken_set` (see the module docstring).

    match: for ``random``, the concept whose per-site rank it copies (default ``text``) or an int rank.
    text_classes: K of ``text``; pitch_bins: bins of ``pitch`` (0: real-valued); random_space: ``whitened`` or
    ``raw``; seed: of the random basis; tokenizer: for ``text`` (default: the cache model's, loaded by name);
    items: fit on these item ids only (default all; e.g. a training split, to test erasure on held-out items);
    batch_rows: rows per streamed batch (default: ~64 MB); progress(sites done, sites in all, site) after each site.
    One pass over the cache per site; memory: the row labels, one batch and a d × d float64 covariance.
    Raises InterpError for an unknown concept or site, or labels that cannot be made.
    """
    from concept_erasure import LeaceFitter

    from interp.provenance import provenance

    cache = cache if isinstance(cache, ActivationCache) else ActivationCache.open(cache)
    spoken_set = spoken_set if isinstance(spoken_set, SpokenSet) else SpokenSet.open(Path(spoken_set))
    if concept not in CONCEPTS:
        raise InterpError(f"unknown concept {concept!r}; choose one of {', '.join(CONCEPTS)}")
    if concept != "random" and match is not None:
        raise InterpError("match belongs to the random concept")
    if random_space not in ("whitened", "raw"):
        raise InterpError(f"random space must be whitened or raw, got {random_space!r}")
    if isinstance(sites, str):
        chosen = expand_sites(sites, cache.sites)
    else:
        chosen = list(cache.sites if sites is None else sites)
        missing = [s for s in chosen if s not in cache.sites]
        if missing or not chosen:
            raise SiteError(f"unknown site {missing[0] if missing else '(none given)'!r}: this cache has "
                            f"{describe_sites(cache.sites)}")
    matched_rank: int | None = None
    label_concept = concept
    if concept == "random":
        match = "text" if match is None else match
        if isinstance(match, str) and match.strip().isdigit():
            match = int(match)
        if isinstance(match, (int, np.integer)) and not isinstance(match, bool):
            if match < 0:
                raise InterpError(f"a random eraser's rank must be 0 or more, got {match}")
            matched_rank, label_concept = int(match), "boc"
        elif match in CONCEPTS and match != "random":
            label_concept = str(match)
        else:
            raise InterpError(f"match must be a concept other than random, or a rank; got {match!r}")
    needs_tokenizer = label_concept == "text" and matched_rank is None
    if needs_tokenizer and tokenizer is None:
        tokenizer = _model_tokenizer(cache)
    labels = concept_labels(cache, spoken_set, label_concept, text_classes=text_classes, pitch_bins=pitch_bins,
                            tokenizer=tokenizer, items=items)
    selection = None
    streamed = np.ones(labels.keep.size, dtype=bool)
    if items is not None:  # the streamed rows are those of the selected items, in cache order
        wanted = set(items)
        selection = [meta.id for meta in cache.items if meta.id in wanted]
        streamed = np.array([meta.id in wanted for meta in cache.items])[cache.row_table()["item"]]
    z_rows, keep_rows = labels.z[streamed], labels.keep[streamed]
    if labels.keep.sum() < 2:
        raise InterpError(f"only {int(labels.keep.sum())} row has a {label_concept} label; LEACE needs at least 2")

    fitted: dict[str, SiteEraser] = {}
    for done, site in enumerate(chosen, start=1):
        d = cache.dims[site]
        fitter = LeaceFitter(d, labels.z.shape[1], dtype=torch.float64, affine=_FITTER["affine"],
                             constrain_cov_trace=_FITTER["constrain_cov_trace"], shrinkage=_FITTER["shrinkage"],
                             svd_tol=_FITTER["svd_tol"])
        start = 0
        for x, _ in cache.iter_batches(site, batch_rows or max(1, _BATCH_BYTES // (4 * d)), items=selection):
            keep = keep_rows[start:start + len(x)]
            if keep.any():
                fitter.update(torch.from_numpy(x[keep]).double(), torch.from_numpy(z_rows[start:start + len(x)][keep]))
            start += len(x)
        rows = int(labels.keep.sum())
        if concept == "random":
            rank = matched_rank if matched_rank is not None else _site_eraser_from_fitter(fitter, rows).rank
            fitted[site] = _random_site_eraser(fitter, rank, seed=seed, site=site, space=random_space, rows=rows)
        else:
            fitted[site] = _site_eraser_from_fitter(fitter, rows)
        _log.info("%s: %s eraser of rank %d of %d", site, concept, fitted[site].rank, d)
        if progress is not None:
            progress(done, len(chosen), site)

    definition = _DEFINITIONS[concept]
    concept_meta: dict[str, Any] = {"name": concept, "definition": definition, "kind": labels.kind,
                                    "columns": list(labels.columns), "labels": labels.info}
    if concept == "text" or label_concept == "text":
        concept_meta["text_classes"] = text_classes
    if label_concept == "pitch":
        concept_meta["pitch_bins"] = pitch_bins
    if concept == "random":
        concept_meta.update(match=match, matched_concept=None if matched_rank is not None else label_concept,
                            matched_definition=None if matched_rank is not None else _DEFINITIONS[label_concept],
                            space=random_space, seed=seed)
    config = {"cache": str(cache.path), "data": str(spoken_set.root), "concept": concept, "sites": chosen,
              "items": None if items is None else len(selection),
              "match": match, "text_classes": text_classes, "pitch_bins": pitch_bins, "random_space": random_space}
    meta = {
        "concept": concept_meta,
        "method": "leace" if concept != "random" else f"random-{random_space}",
        "model": cache.model, "model_info": cache.header.model_info,
        "cache": {"path": str(cache.path), "header_digest": cache.header.digest(), "dataset": cache.header.dataset,
                  "positions": cache.positions, "dtype": cache.dtype, "items": len(cache.items)},
        "fitted_rows": "audio rows of the cache (kind audio) with a label",
        "default_positions": "audio",
        "fitter": dict(_FITTER),
        "versions": _versions(),
        "provenance": provenance(command="interp erase fit", config=config, seed=seed),
    }
    return Eraser(concept, fitted, json.loads(json.dumps(meta, allow_nan=False, default=str)))


# ---------------------------------------------------------------------------------------------------------------
# applying


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, tensor: Tensor) -> Any:
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


class ActiveErasure:
    """What `apply_eraser` yields: the eraser in force, its sites and positions, and `batch(...)` for direct calls.

    The audio mask in force is a stack: each wrapped adapter call pushes one (see the module docstring).
    """

    _ENTRY_POINTS = ("logits", "score_choices", "generate")
    _BUILDERS = ("prepare", "_encode")

    def __init__(self, model: Any, eraser: Eraser, sites: list[str], positions: str) -> None:
        self.model = model
        self.eraser = eraser
        self.sites = sites
        self.positions = positions
        self._masks: list[Tensor | None] = []
        self._past = 0
        self._chunk_key: tuple | None = None
        self._chunk_mask: Tensor | None = None
        self._chunk: Tensor | None = None
        self._tensors: dict[tuple[str, torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor]] = {}

    # -- where the audio is

    @contextmanager
    def batch(self, batch_or_mask: Any) -> Iterator[None]:
        """Within the block, forward passes use this batch's audio mask ((batch, seq) bool, or a SpeechBatch)."""
        mask = getattr(batch_or_mask, "audio_mask", batch_or_mask)
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            raise InterpError("an audio mask is a (batch, seq) bool tensor or a SpeechBatch")
        self._masks.append(mask.detach().bool().cpu())
        try:
            yield
        finally:
            self._masks.pop()

    @contextmanager
    def _scope(self) -> Iterator[None]:
        self._masks.append(None)
        try:
            yield
        finally:
            self._masks.pop()

    def _wrap_entry(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if name == "logits":
                batch = args[0] if args else kwargs.get("batch")
                with self.batch(batch):
                    return original(*args, **kwargs)
            with self._scope():
                return original(*args, **kwargs)
        return wrapped

    def _wrap_builder(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            batch = original(*args, **kwargs)
            if self._masks and getattr(batch, "audio_mask", None) is not None:
                self._masks[-1] = batch.audio_mask.detach().bool().cpu()
            return batch
        return wrapped

    def _past_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0

    def _audio_positions(self, batch: int, seq: int, device: torch.device) -> Tensor:
        mask = self._masks[-1] if self._masks else None
        if mask is None:
            raise InterpError("an erasure hook at audio positions ran without knowing where the audio is: call the "
                              "model through its adapter (logits, score_choices, generate) inside apply_eraser, or "
                              "wrap direct calls in `with active.batch(batch):`; systems sharing the hooked modules "
                              "must not run inside the block")
        if self._past >= mask.shape[1]:  # a pass past the prompt (cached decoding, choices after the prompt)
            return torch.zeros(batch, seq, dtype=torch.bool, device=device)
        if mask.shape[0] != batch:
            raise InterpError(f"the audio mask in force covers {mask.shape[0]} sequences but the forward pass has "
                              f"{batch}; erasure at audio positions follows the batch the adapter prepared")
        key = (self._past, seq, batch, device)
        if mask is not self._chunk_mask or key != self._chunk_key:  # one slice per forward pass, not per site
            chunk = torch.zeros(batch, seq, dtype=torch.bool)
            part = mask[:, self._past:self._past + seq]
            chunk[:, :part.shape[1]] = part
            self._chunk_mask, self._chunk_key, self._chunk = mask, key, chunk.to(device)
        return self._chunk

    # -- the hooks

    def _erase(self, name: str, x: Tensor, *, every_row: bool) -> Tensor | None:
        site = self.eraser.sites[name]
        if x.shape[-1] != site.d:
            raise InterpError(f"site {name}: the model's activations are {x.shape[-1]} wide but the eraser was "
                              f"fitted on {site.d} (model {self.eraser.model}); use an eraser fitted on this model")
        work = torch.promote_types(x.dtype, torch.float32)
        key = (name, x.device, work)
        if key not in self._tensors:
            self._tensors[key] = tuple(t.to(device=x.device, dtype=work)
                                       for t in (site.proj_left, site.proj_right, site.bias))
        left, right, bias = self._tensors[key]
        y = x.to(work)
        erased = (y - ((y - bias) @ right.mT) @ left.mT).to(x.dtype)
        if every_row or self.positions == "all":
            return erased
        mask = self._audio_positions(x.shape[0], x.shape[1], x.device)
        return torch.where(mask[..., None], erased, x)

    def _output_hook(self, name: str, every_row: bool) -> Callable[..., Any]:
        def hook(module: Any, args: tuple, output: Any) -> Any:
            return _replace_first(output, self._erase(name, _first(output), every_row=every_row))
        return hook

    def _input_hook(self, name: str, every_row: bool) -> Callable[..., Any]:
        def hook(module: Any, args: tuple, kwargs: dict) -> Any:
            if args:
                return (self._erase(name, args[0], every_row=every_row), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self._erase(name, kwargs["hidden_states"], every_row=every_row)}
        return hook

    def install(self, stack: ExitStack, table: Mapping[str, Site]) -> None:
        """Register the hooks and wrap the adapter's entry points; `stack` undoes both."""
        active = [name for name in self.sites if self.eraser.sites[name].rank > 0]
        sequence = [name for name in active if table[name].seconds_per_row is None]
        if self.positions == "audio" and sequence:
            first = table.get("llm.embed") or table.get("llm.layers.0")
            if first is None:
                raise InterpError("erasure at audio positions needs the model's first decoder layer (site llm.embed)")
            handle = first.module.register_forward_pre_hook(self._past_hook, with_kwargs=True)
            stack.callback(handle.remove)
            for attr in self._ENTRY_POINTS + self._BUILDERS:
                original = getattr(self.model, attr, None)
                if original is None:
                    continue
                had_own = attr in vars(self.model)
                previous = vars(self.model).get(attr)
                wrapper = self._wrap_builder(original) if attr in self._BUILDERS else self._wrap_entry(attr, original)
                setattr(self.model, attr, wrapper)
                stack.callback(self._restore, attr, had_own, previous)
        for name in active:
            site = table[name]
            every_row = site.seconds_per_row is not None
            if site.take == "output":
                handle = site.module.register_forward_hook(self._output_hook(name, every_row))
            else:
                handle = site.module.register_forward_pre_hook(self._input_hook(name, every_row), with_kwargs=True)
            stack.callback(handle.remove)

    def _restore(self, attr: str, had_own: bool, previous: Any) -> None:
        if had_own:
            setattr(self.model, attr, previous)
        else:
            vars(self.model).pop(attr, None)


def _llm_width(model: Any) -> int | None:
    """Width of the LLM's residual stream: the unembedding's input size (None when the model hides it)."""
    try:
        return int(model.unembed.weight.shape[-1])
    except (AttributeError, TypeError, IndexError):
        return None


@contextmanager
def apply_eraser(model: Any, eraser: Eraser, *, sites: Sequence[str] | str | None = None,
                 positions: Positions = "audio") -> Iterator[ActiveErasure]:
    """Within the block, `model`'s forward passes (and so every generation step) have `eraser` applied at
    `sites` (default: every fitted site; a list or a site spec) at ``audio`` positions or ``all`` positions.

    Raises InterpError (one line) when the model lacks a site, a site's width differs from the eraser's, or
    positions is unknown. Hooks and wrappers are removed on exit, also when the block raises.
    """
    if positions not in ("audio", "all"):
        raise InterpError(f"positions must be audio or all, got {positions!r}")
    if not hasattr(model, "sites"):
        raise InterpError(f"{getattr(model, 'name', type(model).__name__)!r} has no hook sites (a cascade or an "
                          "endpoint): erasure needs a model whose activations it can reach")
    fitted = list(eraser.sites)
    if isinstance(sites, str):
        chosen = expand_sites(sites, fitted)
    else:
        chosen = fitted if sites is None else list(sites)
        unknown = [s for s in chosen if s not in eraser.sites]
        if unknown or not chosen:
            raise SiteError(f"the eraser has no site {unknown[0] if unknown else '(none given)'!r}: it was fitted on "
                            f"{describe_sites(fitted)}")
    table = model.sites()
    name = getattr(model, "name", type(model).__name__)
    absent = [s for s in chosen if s not in table]
    if absent:
        raise InterpError(f"model {name} has no site {absent[0]!r} (it has {describe_sites(list(table))}); the eraser "
                          f"was fitted on {eraser.model}")
    width = _llm_width(model)
    for site in chosen:
        if site.startswith("llm.") and width is not None and width != eraser.sites[site].d:
            raise InterpError(f"site {site} of model {name} is {width} wide but the eraser was fitted on "
                              f"{eraser.sites[site].d} (model {eraser.model}); use an eraser fitted on this model")
    if eraser.model and eraser.model != name:
        _log.warning("applying an eraser fitted on %s to %s", eraser.model, name)
    fitted_weights = eraser.meta.get("model_info", {}).get("weights")
    if fitted_weights is not None and fitted_weights != getattr(model, "weights", None):
        _log.warning("applying an eraser fitted on %s with weights %s to weights %s", eraser.model, fitted_weights,
                     getattr(model, "weights", None))
    if positions == "audio" and not hasattr(model, "prepare"):
        raise InterpError(f"{name} reads no audio: use positions='all' to erase a text model's every position")
    active = ActiveErasure(model, eraser, chosen, positions)
    with ExitStack() as stack:
        active.install(stack, table)
        yield active


def evaluate_erasure(model: Any, eraser: Eraser, spoken_set: SpokenSet, out_dir: str | Path, *,
                     system_name: str | None = None, positions: Positions = "audio",
                     sites: Sequence[str] | str | None = None, limit: int | None = None,
                     progress: Callable[[int, int], None] | None = None, prompt_style: str = "chat") -> Path:
    """Run the behavioural harness (`interp.behavior.run_system`) on `model` with `eraser` applied; returns the
    predictions file `<out_dir>/<system_name>/<set>.jsonl`. system_name defaults to ``<model>+erase-<concept>``.

    `<set>.erasure.json` beside the predictions records the eraser (digest, concept, ranks, file metadata), sites
    and positions; a rerun of the same set into the same folder with another eraser or other settings is refused
    (InterpError), since the harness resumes the items already answered. Other sets may use other erasers (a
    sweep fits one per set).
    """
    from interp.behavior import run_system, set_name

    name = system_name or f"{getattr(model, 'name', 'model')}+erase-{eraser.concept}"
    chosen = expand_sites(sites, list(eraser.sites)) if isinstance(sites, str) else list(sites or eraser.sites)
    record = {"eraser_digest": eraser.digest(), "concept": eraser.concept, "positions": positions, "sites": chosen,
              "model": getattr(model, "name", None), "ranks": eraser.summary(), "eraser": eraser.meta}
    folder = Path(out_dir) / name
    sidecar = folder / f"{set_name(spoken_set.root)}.erasure.json"
    if sidecar.is_file():
        try:
            previous = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InterpError(f"{sidecar}: not valid JSON ({error.msg}); delete the folder to start again") from None
        for key in ("eraser_digest", "positions", "sites"):
            if previous.get(key) != record[key]:
                raise InterpError(f"{sidecar}: these predictions were made with another {key.replace('_', ' ')}; "
                                  "choose another --out or system name")
    with apply_eraser(model, eraser, sites=chosen, positions=positions):  # refuses a wrong model before writing
        folder.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps(record, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
        return run_system(model, spoken_set, Path(out_dir), system_name=name, limit=limit, progress=progress,
                          prompt_style=prompt_style)

