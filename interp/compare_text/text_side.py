"""The text side: the speech model's own LLM reading each item's transcript, cached at the transcript's tokens.

The transcript is put where the audio went, in the same task prompt the cache's audio was read with, and the
whole text is tokenised at once, exactly as the matched cascade (and the oracle) give it to the LLM
(`TextLM.render` / `TextLM.prompt_ids`). The bare transcript would be simpler, but its first token would sit at
position 0 or 1, where causal LLMs keep their attention-sink states with norms far above every other position,
and the audio side never has that: with the prompt, both sides' states come after the same context.

Rows kept are the tokens that overlap the transcript's characters in the rendered text (a leading space merged
into the first word's token counts as that word's), with each token's character span inside the transcript,
so tokens map to words. They are cached in one HDF5 file beside the results (`TEXT_STATES`), reused when its
header (model, weights, set, prompts, items) matches and it holds every layer asked for:

    attrs["header"]                         JSON: model, model_info, text_llm, dataset, prompts, items, sites
    /items/{id, offset}                     (items,), (items + 1,): item k's rows are offset[k]:offset[k+1]
    /rows/{token_id, pos, char_start, char_end}   (rows,) int64: token, position in the LLM input, span in the
                                            transcript [char_start, char_end)
    /sites/llm.layers.N                     (rows, d) float32
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from activations.hooks import StopForward, capture
from interp.data.manifest import Item
from interp.errors import InterpError
from interp.io import write_atomic
from interp.models.encoded import on_device
from interp.models.own_backbone import own_text_lm
from interp.models.prompting import chat_text, split_prompt, with_bos
from interp.models.text_lm import TextLM

__all__ = ["TEXT_STATES", "TextStates", "text_llm_of", "transcript_tokens", "text_states"]

_log = logging.getLogger(__name__)

TEXT_STATES = "text_states.h5"
"""The text side's cache file, in the results folder."""

_ROWS = ("token_id", "pos", "char_start", "char_end")


def text_llm_of(system: object) -> TextLM:
    """The LLM inside a speech system as a TextLM (its own modules and tokenizer): a TextLM is itself; Ultravox
    (mini-ultravox's SmolLM2 included), Qwen2-Audio and Phi-4-MM (without its speech LoRA) through
    `interp.models.own_backbone.own_text_lm`; InterpError (one line) for anything else."""
    if isinstance(system, TextLM):
        return system
    return own_text_lm(system)


def _offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` (no special tokens added) and each token's character span. A slow tokenizer without
    offsets mapping gets spans from decoding growing prefixes; InterpError when those do not rebuild the text."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        _log.debug("tokenizer %s has no offsets mapping; spans from decoded prefixes", type(tokenizer).__name__)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ends = [len(tokenizer.decode(ids[:k + 1], clean_up_tokenization_spaces=False)) for k in range(len(ids))]
    if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != text:
        raise InterpError(f"tokenizer {type(tokenizer).__name__} gives no character offsets and does not decode "
                          "back to its input; use its fast version")
    return ids, list(zip([0, *ends[:-1]], ends))


def transcript_tokens(llm: TextLM, prompt: str, transcript: str) -> tuple[list[int], np.ndarray]:
    """(input ids of the whole rendered prompt, BOS as the cascade puts it; rows (tokens, 4) int64 of the tokens
    overlapping the transcript: token id, position in the input, char_start, char_end within the transcript)."""
    before, _ = split_prompt(chat_text(llm.tokenizer, prompt))
    rendered = llm.render(prompt, transcript)
    start, end = len(before), len(before) + len(transcript)
    ids, spans = _offsets(llm.tokenizer, rendered)
    full = with_bos(llm.tokenizer, ids)
    shift = len(full) - len(ids)
    rows = [(token, k + shift, max(a - start, 0), min(b, end) - start)
            for k, (token, (a, b)) in enumerate(zip(ids, spans)) if b > start and a < end]
    return full, np.array(rows, dtype=np.int64).reshape(-1, 4)


@dataclass(frozen=True)
class TextStates:
    """A text-side cache file: the item order, the rows' table and the layers it holds (read on demand)."""

    path: Path
    header: dict[str, Any]
    item_ids: tuple[str, ...]
    offsets: np.ndarray
    rows: dict[str, np.ndarray]

    @classmethod
    def open(cls, path: Path) -> TextStates:
        with h5py.File(path, "r") as f:
            header = json.loads(str(f.attrs["header"]))
            ids = tuple(f["items/id"].asstr()[()])
            offsets = f["items/offset"][()]
            rows = {key: f[f"rows/{key}"][()] for key in _ROWS}
        return cls(Path(path), header, ids, offsets, rows)

    @property
    def sites(self) -> list[str]:
        return list(self.header["sites"])

    def read(self, site: str) -> np.ndarray:
        """(rows, d) float32 of one site, every item, in item order."""
        if site not in self.header["sites"]:
            raise InterpError(f"{self.path} holds no {site}; it holds {', '.join(self.sites)}")
        with h5py.File(self.path, "r") as f:
            return f[f"sites/{site}"][()]


@torch.no_grad()
def _run(llm: TextLM, ids: list[int], positions: np.ndarray, sites: Sequence[str]) -> dict[str, np.ndarray]:
    """The named sites' states at `positions` of one input, the pass stopped after the last site."""
    table = llm.sites()
    with capture(table, list(sites), stop_after_last=True) as captured:
        try:
            llm.model(**on_device({"input_ids": torch.tensor([ids])}, llm.model))
        except StopForward:
            pass
    index = torch.as_tensor(positions, dtype=torch.long)
    return {site: captured[site][0, index.to(captured[site].device)].float().cpu().numpy() for site in sites}


def _extract(llm: TextLM, items: Sequence[Item], prompt_for: Callable[[Item], str], sites: Sequence[str],
             progress: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(offsets, rows (rows, 4), states by site) of every item, one forward pass each (no padding)."""
    missing = [site for site in sites if site not in llm.sites()]
    if missing:
        raise InterpError(f"{llm.name} has no site {missing[0]}; it has {len(llm.sites()) - 1} layers")
    tables, states, offsets = [], {site: [] for site in sites}, [0]
    for item in items:
        ids, rows = transcript_tokens(llm, prompt_for(item), item.transcript)
        for site, value in _run(llm, ids, rows[:, 1], sites).items():
            states[site].append(value)
        tables.append(rows)
        offsets.append(offsets[-1] + len(rows))
        if progress is not None:
            progress(1)
    return np.array(offsets, dtype=np.int64), np.concatenate(tables), {
        site: np.concatenate(parts) for site, parts in states.items()}


def _write(path: Path, header: dict[str, Any], offsets: np.ndarray, rows: np.ndarray,
           states: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["header"] = json.dumps(header)
            f.create_dataset("items/id", data=np.array(header["items"], dtype=h5py.string_dtype()))
            f.create_dataset("items/offset", data=offsets)
            for column, key in enumerate(_ROWS):
                f.create_dataset(f"rows/{key}", data=rows[:, column])
            for site, value in states.items():
                f.create_dataset(f"sites/{site}", data=value.astype(np.float32))

    write_atomic(path, write)


def text_states(llm: TextLM, items: Sequence[Item], prompt_for: Callable[[Item], str], sites: Sequence[str],
                path: Path, header: dict[str, Any], *,
                progress: Callable[[int], None] | None = None) -> TextStates:
    """The text side of `items` at `sites`, from the cache file at `path` when its header equals `header` (plus
    the items) and it holds every site, else computed and written there (atomically, replacing it)."""
    path = Path(path)
    header = json.loads(json.dumps({**header, "text_llm": llm.name, "items": [item.id for item in items]}))
    if path.is_file():
        cached = TextStates.open(path)
        same = {k: v for k, v in cached.header.items() if k != "sites"} == header
        if same and set(sites) <= set(cached.sites):
            _log.info("text side reused from %s", path)
            return cached
        _log.info("text side in %s is for other %s; recomputing", path, "settings" if not same else "layers")
    offsets, rows, states = _extract(llm, items, prompt_for, sites, progress)
    _write(path, {**header, "sites": list(sites)}, offsets, rows, states)
    return TextStates.open(path)
