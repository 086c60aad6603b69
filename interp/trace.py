"""Tracing with nnsight: any system's torch model under `nnsight.NNsight`, reached by the project's site names.

Why: the project's hooks (activations.hooks) serve its pipelines; a notebook wants to read and edit activations as
nnsight writes it, without learning each adapter's module paths, which move between transformers versions.
`trace(system)` wraps the system's torch model in nnsight's generic `NNsight` (the models here are local and some
are custom nn.Modules, so not `LanguageModel`) and maps each site of `system.sites()` to its Envoy by module
identity, so `llm.layers.12`, `projector` and `audio.layers.3` mean what they mean in caches and results:

    traced = trace(load_model("mini-ultravox"))
    with traced.trace(audio, prompt) as tracer:             # sites are read and edited in forward order
        traced.edit("llm.layers.3", torch.zeros_like)        # at the audio positions, as erasure's hooks edit
        h = traced.site("llm.layers.12").value.save()       # (1, seq, 576): at audio_mask, what `interp extract` stores
        logits = tracer.result.save()

A trace runs the system's own forward, so its numbers are the pipelines' numbers: `trace` builds the batch with
`system.prepare` and runs `system.logits(batch)` (the pass `interp extract` hooks); `scoring` runs
`system.score_choices` (the pass `interp behave` and `interp erase eval` score). In `scoring` the prompt pass is
the first occurrence of every LLM site, where the block's reads land; a choice of several tokens continues over a
second pass from the prompt's KV cache, which holds only text: edits at audio positions leave it alone and edits at
every position change it too, as the project's hooks do (`TracedSystem.edits`).
A cascade or the oracle is traced through its text LLM, on a transcript, with that LLM's own prompt rendering.

nnsight and praat-parselmouth: at import nnsight mounts `.save` on `object` (its CONFIG.APP.PYMOUNT), after which
parselmouth's pybind11 classes cannot define their own `save`, so `import parselmouth` (the pitch probe) fails with
"Cannot overload existing non-function object". This module imports parselmouth first; where nnsight was imported
before it, the mount is lifted for parselmouth's import and put back (`import_nnsight`).

Wrapping is permanent: nnsight installs a controller as each module's `forward`, inert outside a trace, and the
project's torch hooks still fire through it. A text LLM shared by several systems (the mini stack's SmolLM2) is
instrumented for all of them; each `TracedSystem` routes only its own traces.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.util import find_spec
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from interp.errors import InterpError
from interp.models.base import Site, SpeechBatch
from interp.models.encoded import right_pad
from interp.models.prompting import choice_delimiter, continuation_ids, with_bos
from interp.sites import SiteError, describe_sites, expand_sites

if TYPE_CHECKING:  # interp.erasure imports probes, so parselmouth: only after import_nnsight (below) has run
    from nnsight import Envoy
    from nnsight.intervention.tracer import InterleavingTracer

    from interp.erasure.eraser import Eraser

__all__ = ["Positions", "TracedSite", "TracedSystem", "import_nnsight", "trace"]

_log = logging.getLogger(__name__)

Positions = Literal["audio", "all"]


def import_nnsight() -> ModuleType:
    """nnsight, imported so that praat-parselmouth still imports: parselmouth first, before nnsight mounts `.save`
    on every object; if nnsight is already imported and parselmouth is not, the mount is lifted while parselmouth
    imports and then put back (nnsight's `unmount`/`mount`)."""
    if "parselmouth" not in sys.modules and find_spec("parselmouth") is not None:
        mounted = "nnsight" in sys.modules and "save" in vars(object)
        if mounted:
            from nnsight._c import mount, unmount

            unmount("save")
            _log.debug("lifting nnsight's .save mount to import parselmouth")
        try:
            import parselmouth  # noqa: F401
        finally:
            if mounted:
                mount(sys.modules["nnsight"].save, "save")
    import nnsight

    return nnsight


nnsight = import_nnsight()


_OWN = ("site", "envoy", "path", "value")
"""A TracedSite's own attributes; every other one is its Envoy's."""


class TracedSite:
    """One site of a traced system: its Envoy, and its activation as the project means it.

    `value` is the site's tensor (batch, seq, d): the module's output (its first element when the output is a
    tuple), or its first input for an input site (`llm.embed`), which is what the hooks and caches see. Assigning
    `value` replaces that tensor and keeps the rest of the output. Every other attribute (`output`, `input`,
    `inputs`, `source`, `skip`, ...) is the Envoy's, with nnsight's meaning. Read and write inside a trace, in the
    order the forward pass reaches the sites.
    """

    def __init__(self, site: Site, envoy: Envoy, path: str) -> None:
        self.site = site
        self.envoy = envoy
        self.path = path

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def audio_only(self) -> bool:
        """True where every row is audio (`projector`, `audio.layers.*`): edits at audio positions touch every row."""
        return self.site.seconds_per_row is not None

    @property
    def value(self) -> Tensor:
        raw = self.envoy.output if self.site.take == "output" else self.envoy.input
        return raw[0] if isinstance(raw, tuple) else raw

    @value.setter
    def value(self, tensor: Tensor) -> None:
        if self.site.take == "input":
            self.envoy.input = tensor
            return
        raw = self.envoy.output
        self.envoy.output = (tensor, *raw[1:]) if isinstance(raw, tuple) else tensor

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.envoy, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """`site.output = x` writes the Envoy's output (not an attribute of this view, which nnsight never reads)."""
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.envoy, name, value)

    def __repr__(self) -> str:
        return f"TracedSite({self.name!r}: {self.site.take} of {self.path or 'the model'})"


def _target(system: object) -> object:
    """What holds the torch model: the system itself (a speech LLM, a text LLM), or a cascade's or the oracle's
    text LLM. Raises InterpError for a system with none (an endpoint, an ASR model)."""
    for candidate in (system, getattr(system, "llm", None)):
        if hasattr(candidate, "sites") and isinstance(getattr(candidate, "model", None), nn.Module):
            return candidate
    raise InterpError(f"{getattr(system, 'name', system)!r} has no torch model with sites to trace (an endpoint or "
                      "an ASR model?); trace a speech LLM, a text LLM, a cascade or the oracle")


def _site_envoys(root: Envoy, model: nn.Module, table: dict[str, Site]) -> dict[str, TracedSite]:
    """Each site's Envoy, found by the path of its module, looked up by identity in `model.named_modules()`."""
    paths = {id(module): path for path, module in model.named_modules()}
    out = {}
    for name, site in table.items():
        path = paths.get(id(site.module))
        if path is None:
            raise InterpError(f"site {name}'s module is not inside {type(model).__name__}, the model being traced")
        out[name] = TracedSite(site, root.get(path) if path else root, path)
    return out


def _listed(source: Any, prompt: str | Sequence[str]) -> tuple[list, list[str]]:
    """(sources, prompts) as lists: one item (a clip or a transcript, and a prompt) or lists of them."""
    if isinstance(prompt, str):
        return [source], [prompt]
    return list(source), list(prompt)


def _text_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(batch, seq, vocab) float32 logits of a text LLM, without gradients (as `EncodedSpeechLM.logits`)."""
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def _text_batch(rows: Sequence[Sequence[int]], *, pad_id: int) -> SpeechBatch:
    """A text LLM's token ids as a SpeechBatch with no audio position, so every trace has a `batch`."""
    input_ids, attention_mask = right_pad(rows, pad_id=pad_id)
    return SpeechBatch({"input_ids": input_ids, "attention_mask": attention_mask}, input_ids, attention_mask,
                       torch.zeros(input_ids.shape, dtype=torch.bool), np.full((*input_ids.shape, 2), np.nan))


class TracedSystem:
    """A system's torch model under nnsight, with its sites by name (see the module's docstring).

    system: what was traced (a cascade's or the oracle's text LLM for those); model: the `nnsight.NNsight` root;
    sites: site names in forward order; batch: the SpeechBatch of the latest trace (for a text LLM, its token ids
    with no audio position), whose `audio_mask` the edits use.
    """

    def __init__(self, system: object) -> None:
        self.system = _target(system)
        self.name = getattr(system, "name", type(system).__name__)
        self.hears_audio = hasattr(self.system, "prepare")
        self.model = nnsight.NNsight(self.system.model)
        self._sites = _site_envoys(self.model, self.system.model, self.system.sites())
        self.batch: SpeechBatch | None = None
        self._passes = 1
        _log.debug("tracing %s: %s", self.name, describe_sites(self.sites))

    @property
    def sites(self) -> list[str]:
        return list(self._sites)

    def site(self, name: str) -> TracedSite:
        """The site called `name`; SiteError (an InterpError, one line listing the known sites) for another name."""
        try:
            return self._sites[name]
        except KeyError:
            raise SiteError(f"{self.name} has no site {name!r}: known sites are {describe_sites(self.sites)}") from None

    __getitem__ = site

    def values(self, sites: str | Sequence[str]) -> dict[str, Tensor]:
        """Inside a trace: {site: tensor} for a spec (`"llm.layers.*"`, `"projector,llm.layers.0,4"`) or a list, read
        in forward order and saved, so the dict outlives the block (nnsight keeps only what is saved)."""
        names = expand_sites(sites, self.sites) if isinstance(sites, str) else [self.site(s).name for s in sites]
        return nnsight.save({name: self._sites[name].value for name in self.sites if name in names})

    def __repr__(self) -> str:
        return f"TracedSystem({self.name}: {describe_sites(self.sites)})"

    def _forward(self, source: Any, prompt: str | Sequence[str]) -> tuple[tuple, Callable[..., Tensor]]:
        """(inputs, function) of the pass `trace` runs; sets `batch` and the number of passes (one)."""
        sources, prompts = _listed(source, prompt)
        self._passes = 1
        if self.hears_audio:
            self.batch = self.system.prepare(sources, prompts)
            return (self.batch,), self.system.logits
        self.batch = _text_batch([self.system.prompt_ids(text, text_prompt)
                                  for text, text_prompt in zip(sources, prompts)], pad_id=self.system.pad_id)
        return (self.batch.input_ids, self.batch.attention_mask), functools.partial(_text_logits, self.system.model)

    def _scored(self, source: Any, prompt: str, choices: Sequence[str]) -> None:
        """Set `batch` to the prompt pass of `system.score_choices`, and the passes it makes: a second one, over the
        prompt's KV cache, where a choice has more than one token (interp.models.encoded.score_after_prompt)."""
        if self.hears_audio:
            self.batch, ids = self.system.scoring_batch(source, prompt, choices)
        else:
            tokenizer = self.system.tokenizer
            context, ids = continuation_ids(tokenizer, self.system.render(prompt, source), choices,
                                            delimiter=choice_delimiter(prompt))
            self.batch = _text_batch([with_bos(tokenizer, context)], pad_id=self.system.pad_id)
        self._passes = 2 if any(len(choice) > 1 for choice in ids) else 1

    def trace(self, source: Any, prompt: str | Sequence[str]) -> InterleavingTracer:
        """`with traced.trace(audio, prompt) as tracer:` (a transcript for a text LLM; or lists of both): the block
        runs interleaved with the system's forward on the batch it builds (`system.prepare`, then
        `system.logits`, as `interp extract`); `tracer.result` is the (batch, seq, vocab) float32 logits."""
        args, forward = self._forward(source, prompt)
        tracer = self.model.trace(*args, fn=forward)
        try:
            tracer.capture()  # from here, so that the frame nnsight reads the `with` block from is the caller's
        except nnsight.tracing.tracer.WithBlockNotFoundError:
            raise InterpError("traced.trace(...) opens a block: write `with traced.trace(audio, prompt) as "
                              "tracer:`") from None
        return tracer

    def scoring(self, source: Any, prompt: str, choices: Sequence[str]) -> InterleavingTracer:
        """`with traced.scoring(audio, prompt, choices) as tracer:` runs `system.score_choices` (the scores of
        `interp behave` and `interp erase eval`); `tracer.result` is the (choices,) float64 summed log-probabilities.
        A read in the block sees the prompt pass; edits are made as the project's hooks make them (see `edits`)."""
        self._scored(source, prompt, choices)
        tracer = self.model.trace(source, prompt, list(choices), fn=self.system.score_choices)
        try:
            tracer.capture()  # from here, as in `trace`
        except nnsight.tracing.tracer.WithBlockNotFoundError:
            raise InterpError("traced.scoring(...) opens a block: write `with traced.scoring(audio, prompt, "
                              "choices) as tracer:`, or call traced.score_choices") from None
        return tracer

    def score_choices(self, source: Any, prompt: str, choices: Sequence[str], *,
                      intervene: Callable[[TracedSystem], None] | None = None) -> np.ndarray:
        """(choices,) float64 scores as `system.score_choices` gives them, with `intervene(self)` run inside the
        trace (e.g. `lambda t: t.erase(eraser)`), so an edit written with nnsight answers like a system."""
        with self.scoring(source, prompt, choices) as tracer:
            if intervene is not None:
                intervene(self)
            scores = tracer.result.save()
        return np.asarray(scores, dtype=np.float64)

    def _positions(self, positions: Positions | None) -> Positions:
        chosen = positions or ("audio" if self.hears_audio else "all")
        if chosen not in ("audio", "all"):
            raise InterpError(f"positions must be audio or all, got {positions!r}")
        if chosen == "audio" and not self.hears_audio:
            raise InterpError(f"{self.name} reads no audio: use positions='all' to edit a text LLM's every position")
        return chosen

    def _audio_mask(self, x: Tensor) -> Tensor:
        """(batch, seq) bool on x's device: the audio positions of the traced batch."""
        mask = None if self.batch is None else self.batch.audio_mask
        if mask is None or tuple(mask.shape) != tuple(x.shape[:2]):
            raise InterpError(f"an edit at audio positions met a {tuple(x.shape[:2])} activation but the traced batch "
                              f"is {None if mask is None else tuple(mask.shape)}: edit inside the system's own trace")
        return mask.to(x.device)

    def _edit_once(self, site: TracedSite, change: Callable[[Tensor], Tensor], where: Positions) -> None:
        x = site.value
        changed = change(x)
        if where == "audio" and not site.audio_only:
            changed = torch.where(self._audio_mask(x)[..., None], changed, x)
        site.value = changed

    def edits(self, changes: Mapping[str, Callable[[Tensor], Tensor]], *, positions: Positions | None = None) -> None:
        """Inside a trace, replace each named site's tensor x by change(x) (a function, a SiteEraser), sites in
        forward order, as activations.hooks.edit does: at the traced batch's audio positions (the default for a
        speech LLM; erasure's rows) or at every position ("all", the default for a text LLM); audio-only sites
        change on every row; other positions pass through bit for bit (torch.where).

        Every pass is edited as the hooks edit it: the prompt pass; and where `scoring` continues the choices over
        a second pass, that pass too at all positions (at audio positions it holds only text, so it is left as it
        is). That second pass comes after the whole first one, so give every edit of such a block in one call."""
        names = [self.site(name).name for name in changes]  # a site this system lacks: SiteError, before any edit
        where = self._positions(positions)
        order = [self._sites[name] for name in self.sites if name in names]
        if where == "audio" or self._passes == 1:
            for site in order:
                self._edit_once(site, changes[site.name], where)
            return
        from nnsight.intervention.iterator import Iterations

        for step in Iterations()[:self._passes]:  # each pass's occurrence of the sites, in turn
            for site in order:
                if step == 0 or not site.audio_only:  # the text-only continuation runs no audio encoder
                    self._edit_once(site, changes[site.name], where)

    def edit(self, name: str, change: Callable[[Tensor], Tensor], *, positions: Positions | None = None) -> None:
        """Inside a trace, replace site `name`'s tensor x by change(x): `edits` with one site."""
        self.edits({name: change}, positions=positions)

    def erase(self, eraser: Eraser, sites: Sequence[str] | str | None = None, *,
              positions: Positions | None = None) -> None:
        """Inside a trace, apply `eraser` as `interp erase eval` does (interp.erasure.apply_eraser): at its fitted
        sites (or `sites`, a list or a spec), in forward order, at audio positions by default; rank-0 sites are left
        alone. One SiteEraser at one site: `traced.edit(site, site_eraser)`."""
        fitted = list(eraser.sites)
        chosen = expand_sites(sites, fitted) if isinstance(sites, str) else list(sites or fitted)
        unknown = [name for name in chosen if name not in eraser.sites]
        if unknown:
            raise SiteError(f"the eraser has no site {unknown[0]!r}: it was fitted on {describe_sites(fitted)}")
        for name in chosen:
            self.site(name)  # a site this system lacks: SiteError, rank 0 or not
        from interp.erasure.apply import checked_edit  # after import_nnsight: interp.erasure imports parselmouth

        self.edits({name: checked_edit(name, eraser.sites[name], eraser.model) for name in chosen
                    if eraser.sites[name].rank > 0}, positions=positions)


def trace(system: object) -> TracedSystem:
    """`system` (a speech LLM, a text LLM, a cascade or the oracle: their text LLM) under nnsight, reached by site
    names: `trace(load_model("tiny-ultravox")).site("llm.layers.2")`. See the module's docstring."""
    return TracedSystem(system)
