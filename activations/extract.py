"""The extraction loop: a speech model reads a spoken set, hooks copy the chosen sites into a cache.

Rows come in two families that cannot share a cache, because a cache has one row table:
- LLM-sequence sites (`llm.embed`, `llm.layers.{i}`, and `projector`, whose outputs are exactly the
  LLM's audio positions): one row per kept sequence position (audio, text or all);
- encoder sites (`audio.layers.{i}`): one row per encoder frame of the item's audio.
Right padding keeps every item's positions where they are when it runs alone, and padded positions
are never stored, so a row does not depend on the batch it was computed in.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from activations.format import AUDIO, TEXT, CacheHeader, ItemMeta, ItemRows
from activations.hooks import StopForward, capture
from activations.reader import ActivationCache
from activations.writer import CacheWriter
from interp.data.manifest import MANIFEST, Item, SpokenSet
from interp.errors import InterpError
from interp.models.base import SpeechBatch, SpeechLM
from interp.sites import expand_sites

__all__ = ["ExtractionPlan", "plan_extraction", "extract", "dataset_identity", "set_items_of"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionPlan:
    """What to extract: sites (forward order), which positions, and how rows are found."""

    sites: tuple[str, ...]
    positions: str
    encoder_rows: float | None
    """Seconds of audio per row for encoder sites; None for LLM-sequence sites."""


def plan_extraction(model: SpeechLM, spec: str, positions: str) -> ExtractionPlan:
    """Expand the site spec and check that the sites share one row family and fit the positions policy."""
    if not isinstance(model, SpeechLM):
        raise InterpError(f"{getattr(model, 'name', model)!r} is not an end-to-end speech model; extraction hooks "
                          "a model that hears the audio (cascades and the oracle read text)")
    table = model.sites()
    names = expand_sites(spec, list(table))
    encoder = [n for n in names if table[n].seconds_per_row is not None and n != "projector"]
    sequence = [n for n in names if n not in encoder]
    if encoder and sequence:
        raise InterpError(f"{encoder[0]} (one row per encoder frame) and {sequence[0]} (one row per LLM position) "
                          "have different rows; extract them into separate caches")
    if encoder and len({table[n].seconds_per_row for n in encoder}) > 1:
        raise InterpError("the encoder sites chosen have different frame rates; extract them into separate caches")
    if (encoder or "projector" in names) and positions != "audio":
        raise InterpError(f"{(encoder or ['projector'])[0]} has rows at audio positions only; use --positions audio")
    return ExtractionPlan(sites=tuple(names), positions=positions,
                          encoder_rows=table[encoder[0]].seconds_per_row if encoder else None)


def dataset_identity(spoken_set: SpokenSet) -> str:
    """The set's folder name and a digest of its manifest: a cache belongs to exactly this list of items."""
    digest = hashlib.sha256((spoken_set.root / MANIFEST).read_bytes()).hexdigest()[:16]
    return f"{spoken_set.root.name} (manifest sha256 {digest})"


def set_items_of(cache: ActivationCache, spoken_set: SpokenSet) -> list[Item]:
    """The spoken set's item for each cache item (by id), in cache order. Analyses that need waveforms or
    word timings use it; the set must hold every cached item with the same transcript."""
    by_id = {item.id: item for item in spoken_set.items}
    missing = [meta.id for meta in cache.items if meta.id not in by_id]
    if missing:
        raise InterpError(f"the spoken set {spoken_set.root} lacks {len(missing)} of the cache's {len(cache.items)} "
                          f"items, first {missing[0]!r}: use the set the cache was extracted from")
    for meta in cache.items:
        if by_id[meta.id].transcript != meta.transcript:
            raise InterpError(f"item {meta.id!r} has another transcript in {spoken_set.root} than in the cache: "
                              "use the set the cache was extracted from")
    return [by_id[meta.id] for meta in cache.items]


def _item_meta(item: Item, index: int) -> ItemMeta:
    return ItemMeta(id=item.id, index=index, transcript=item.transcript, label=item.answer,
                    duration=float(item.duration))


def _sequence_rows(batch: SpeechBatch, row: int, positions: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Kept positions of one item of the batch, and their row fields."""
    real = batch.attention_mask[row].bool()
    audio = batch.audio_mask[row] & real
    keep = {"audio": audio, "text": real & ~audio, "all": real}[positions]
    pos = keep.nonzero().squeeze(-1)
    is_audio = audio[pos].numpy()
    token_id = batch.input_ids[row, pos].numpy().astype(np.int64)
    token_id[is_audio] = -1
    span = batch.audio_span[row, pos.numpy()]
    fields = {"pos": pos.numpy().astype(np.int32), "kind": np.where(is_audio, AUDIO, TEXT).astype(np.uint8),
              "t_start": span[:, 0].astype(np.float32), "t_end": span[:, 1].astype(np.float32), "token_id": token_id}
    return pos.numpy(), fields


def _encoder_rows(frames: int, duration: float, seconds: float) -> dict[str, np.ndarray]:
    """Row fields of an item's first `frames` encoder frames: frame k covers [k·s, (k+1)·s), cut at the end."""
    edges = np.minimum(np.arange(frames + 1) * seconds, duration)
    return {"pos": np.arange(frames, dtype=np.int32), "kind": np.full(frames, AUDIO, dtype=np.uint8),
            "t_start": edges[:-1].astype(np.float32), "t_end": edges[1:].astype(np.float32),
            "token_id": np.full(frames, -1, dtype=np.int64)}


def _rows_of_batch(plan: ExtractionPlan, batch: SpeechBatch, captured: dict[str, torch.Tensor],
                   items: Sequence[Item]) -> list[ItemRows]:
    out = []
    for row, item in enumerate(items):
        if plan.encoder_rows is not None:
            available = min(captured[name].shape[1] for name in plan.sites)
            frames = min(available, math.ceil(item.duration / plan.encoder_rows - 1e-6))
            fields = _encoder_rows(frames, item.duration, plan.encoder_rows)
            sites = {name: captured[name][row, :frames] for name in plan.sites}
        else:
            pos, fields = _sequence_rows(batch, row, plan.positions)
            n_audio = int(batch.audio_mask[row].sum())
            sites = {name: (captured[name][row, :n_audio] if name == "projector" else captured[name][row, pos])
                     for name in plan.sites}
        out.append(ItemRows(**fields, sites={name: value.float().cpu().numpy() for name, value in sites.items()}))
    return out


def extract(model: SpeechLM, spoken_set: SpokenSet, out: Path, *, plan: ExtractionPlan,
            prompt_for: Callable[[Item], str],
            dtype: str = "float16", batch_size: int = 8, rank: int = 0, world: int = 1, limit: int | None = None,
            items_per_shard: int = 64, overwrite: bool = False, model_info: dict | None = None,
            provenance: dict | None = None,
            progress: Callable[[int], None] | None = None) -> CacheWriter:
    """Extract the plan's sites for the set's items (the first `limit`; this rank's share `index % world ==
    rank`) into the cache at `out`, skipping items already in finished shards. Returns the closed writer.

    A crash loses at most the shard being written; rerunning the same command resumes.
    """
    sites = model.sites()
    selected = [(index, item) for index, item in enumerate(spoken_set.items[:limit]) if index % world == rank]
    probe_batch = (model.prepare([spoken_set.load_audio(selected[0][1])], [prompt_for(selected[0][1])])
                   if selected else None)
    dims = _site_dims(model, plan, probe_batch) if probe_batch is not None else {}
    header = CacheHeader(model=getattr(model, "name", type(model).__name__), sites=dims, dtype=dtype,
                         positions=plan.positions, dataset=dataset_identity(spoken_set),
                         model_info=model_info or {}, provenance=provenance or {})
    writer = CacheWriter.open(out, header, rank=rank, world=world, items_per_shard=items_per_shard,
                             overwrite=overwrite)
    todo = [(index, item) for index, item in selected if item.id not in writer.done]
    if progress is not None and len(todo) < len(selected):
        progress(len(selected) - len(todo))
    _log.info("extracting %d items (%d already cached) into %s", len(todo), len(selected) - len(todo), out)
    with writer:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            items = [item for _, item in chunk]
            batch = model.prepare([spoken_set.load_audio(item) for item in items], [prompt_for(item) for item in items])
            captured = _run_to_last_site(model, sites, plan, batch)
            for (index, item), rows in zip(chunk, _rows_of_batch(plan, batch, captured, items)):
                writer.add(_item_meta(item, index), rows)
            if progress is not None:
                progress(len(chunk))
    return writer


def _run_to_last_site(model: SpeechLM, sites: dict, plan: ExtractionPlan,
                      batch: SpeechBatch) -> dict[str, torch.Tensor]:
    """The plan's site tensors for a batch; the forward pass stops once the last of them is computed
    (an encoder cache never runs the LLM; a cache of early layers skips the rest)."""
    with capture(sites, plan.sites, stop_after_last=True) as captured, torch.no_grad():
        try:
            model.logits(batch)
        except StopForward:
            pass
        return dict(captured)


def _site_dims(model: SpeechLM, plan: ExtractionPlan, batch: SpeechBatch) -> dict[str, int]:
    """Width of each site, read from one forward pass (adapters do not all declare it in their configs)."""
    captured = _run_to_last_site(model, model.sites(), plan, batch)
    return {name: int(captured[name].shape[-1]) for name in plan.sites}
