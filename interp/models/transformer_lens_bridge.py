"""TransformerLens on the text side: a `TransformerBridge` over a project `TextLM`, with the project's site names.

The project's own hooks stay plain forward hooks on the site tables (docs/architecture.md); this module opens the
cascades' and the oracle's text LLM (and a speech model's own LLM, interp.models.own_backbone) to TransformerLens's
tools (hook names such as `blocks.{i}.attn.hook_pattern`, `run_with_hooks`, patching) without a second model:

    lm = load_model("oracle").llm                       # or mini._smollm2(), own_text_lm(speech), ...
    bridge = to_transformer_lens(lm)
    logits, acts = run_with_sites(bridge, lm, "a great film", prompt=task_prompt)   # acts["llm.layers.3"]
    _, cache = bridge.run_with_cache(torch.tensor([lm.prompt_ids("a great film", task_prompt)]))
    cache["blocks.3.attn.hook_pattern"], cache[hook_for_site("llm.layers.3")]       # TL's own names

How it boots, and why not through `TransformerBridge.boot_transformers`: TL 4.3.0's
`boot_transformers(name, hf_model=..., tokenizer=...)` does take a pre-loaded model (source.py:46), but it runs
the given tokenizer through `setup_tokenizer` → `get_tokenizer_with_bos` (utilities/tokenize_utils.py:153-167),
which, when `add_bos_token` is unset (as on every tokenizer here), reloads it with
`AutoTokenizer.from_pretrained(name_or_path, add_bos_token=True)`: a hub call for a hub id, the GGUF LLMs' cache
folder here (a tokenizer that now adds BOS where SmolLM2's does not), `KeyError: 'name_or_path'` for one built in
memory (the tiny ones); without a tokenizer it loads the hub's. It also turns the given model's decoder layers
into bridge components and its attention to eager in place: the one SmolLM2 that every mini system shares. So
the bridge is built by the builder behind it, `transformer_lens.model_bridge.sources.build_bridge_from_module`
(sources/_bridge_builder.py:282), which takes a module and a config and loads nothing, and then gets a copy of the
TextLM's tokenizer, untouched by TL.

The weights are shared, nothing is copied. The builder changes the module it is given in place (bridge components
replace its submodules), and TL wants eager attention for `hook_pattern` / `hook_attn_scores` to fire, so it is
given a twin: new module objects and config around the TextLM's own parameter and buffer tensors. The TextLM, and
every system sharing it (mini-ultravox, the cascades, the oracle share one SmolLM2), keeps its modules, its sdpa
attention and its hooks. TL's `enable_compatibility_mode()` (norm folding, centring) assigns new tensors to the
twin, so it too leaves the TextLM's weights as they were; after it the bridge no longer shares them.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from interp.errors import InterpError
from interp.models.prompting import encode_context
from interp.models.text_lm import TextLM
from interp.sites import SiteError, describe_sites

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["SITE_HOOKS", "lens_architecture", "to_transformer_lens", "hook_for_site", "site_for_hook",
           "site_hook_table", "run_with_sites"]

_log = logging.getLogger(__name__)

SITE_HOOKS: dict[str, str] = {
    "llm.embed": "blocks.0.hook_resid_pre",
    "llm.layers.{i}": "blocks.{i}.hook_resid_post",
}
"""The one table from the project's site names to TransformerLens hook names, `{i}` the decoder layer.

`llm.embed` is the input of decoder layer 0 and `llm.layers.{i}` the output of layer i (the residual stream,
before the final norm for the last layer), exactly what TL's HookedTransformer-style names `hook_resid_pre` /
`hook_resid_post` hold. The bridge also answers to its native names for the same hook points
(`blocks.0.hook_in`, `blocks.{i}.hook_out`); `blocks.{i}.hook_resid_pre` for i ≥ 1 holds the same tensor as
`llm.layers.{i-1}`, and `hook_embed` equals `llm.embed` only for models without added position embeddings (all
rotary models here). The table names one hook per site, so names translate both ways."""


def _translate(name: str, table: Sequence[tuple[str, str]]) -> str | None:
    """`name` through the first (template, target) pair whose template matches it, `{i}` carried over."""
    for template, target in table:
        match = re.fullmatch(re.escape(template).replace(re.escape("{i}"), r"(\d+)"), name)
        if match:
            return target.replace("{i}", match.group(1)) if match.groups() else target
    return None


def hook_for_site(site: str) -> str:
    """The TL hook name of a project site (`llm.layers.3` → `blocks.3.hook_resid_post`); SiteError otherwise."""
    hook = _translate(site, list(SITE_HOOKS.items()))
    if hook is None:
        raise SiteError(f"site {site!r} has no TransformerLens hook; the text LLM's sites are "
                        f"{', '.join(SITE_HOOKS)}")
    return hook


def site_for_hook(hook: str) -> str:
    """The project site of a TL hook name in SITE_HOOKS (`blocks.3.hook_resid_post` → `llm.layers.3`)."""
    site = _translate(hook, [(target, template) for template, target in SITE_HOOKS.items()])
    if site is None:
        raise SiteError(f"TransformerLens hook {hook!r} is no project site; the sites' hooks are "
                        f"{', '.join(SITE_HOOKS.values())}")
    return site


def site_hook_table(bridge: TransformerBridge) -> dict[str, str]:
    """{site: hook} for every site of the bridged LLM, in forward order (the names of TextLM.sites())."""
    sites = ["llm.embed"] + [f"llm.layers.{i}" for i in range(bridge.cfg.n_layers)]
    return {site: hook_for_site(site) for site in sites}


def _import_transformer_lens() -> tuple:
    """(bridge sources, force_eager_attention, the supported architectures) of transformer_lens, imported on
    first use (about 8 s). Importing them sets the `transformers` logger to ERROR
    (model_bridge/sources/transformers/source.py:43); the level is put back, so the CLI's --log-level still
    governs what transformers logs."""
    transformers_log = logging.getLogger("transformers")
    level = transformers_log.level
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
        from transformer_lens.model_bridge import sources
        from transformer_lens.utilities.attn_implementation import force_eager_attention
    finally:
        transformers_log.setLevel(level)
    return sources, force_eager_attention, SUPPORTED_ARCHITECTURES


_SAME_TEXT_PATH: dict[str, str] = {"Phi4MultimodalForCausalLM": "Phi3ForCausalLM"}
"""Classes TL has no adapter for whose text path is a supported class's. transformers writes Phi-4-MM's decoder
layer, model and causal LM as subclasses of Phi-3's (models/phi4_multimodal/modular_phi4_multimodal.py); the
generated modeling file flattens them, so the MRO does not show it. Text-only input takes Phi-3's path, so TL's
Phi-3 adapter bridges Phi-4-MM's LLM (own_text_lm's LoRA-free twin; tests compare the residual streams)."""


def lens_architecture(model: nn.Module) -> str:
    """The TL architecture adapter for a transformers causal LM: the first class in the model's MRO that TL
    supports, or that _SAME_TEXT_PATH maps to one. Read from the class, not `config.architectures`, because the
    models here are live objects whose config may name no architecture (the tiny ones, Qwen2-Audio's decoder in
    a Qwen2ForCausalLM shell). Raises InterpError in one line otherwise."""
    supported = _import_transformer_lens()[2]
    for cls in type(model).__mro__:
        name = _SAME_TEXT_PATH.get(cls.__name__, cls.__name__)
        if name in supported:
            return name
    raise InterpError(f"TransformerLens 4.3.0 has no architecture adapter for {type(model).__name__}; the "
                      "project's own hooks (TextLM.sites()) still serve it")


def _twin(model: nn.Module) -> nn.Module:
    """New module objects and a new config around `model`'s own parameter and buffer tensors (nothing copied),
    so that what the bridge builder does to the module tree (and eager attention) stays off `model`. Torch hooks
    in place on `model` at boot (a cache extraction's, an eraser's) are not carried over: they belong to that
    context, not to the bridge."""
    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, shared)
    for module in twin.modules():
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    return twin


def to_transformer_lens(text_lm: TextLM) -> TransformerBridge:
    """A TransformerLens `TransformerBridge` over `text_lm`'s weights (shared, not copied; see the module's
    docstring for why it is built with `build_bridge_from_module` on a twin, not `boot_transformers`).

    Its raw-weight forward gives the TextLM's logits and residual stream: exactly those of the TextLM run with
    eager attention, and those of its sdpa forward up to the kernels' op order (measured: 5e-4 absolute on
    SmolLM2's residual stream, whose massive activations reach 1e4; 1.2e-2 on Gemma-3's, up to 8e4).

    Its tokenizer is a copy of the TextLM's; the project's rendering (chat template, BOS exactly once) is
    run_with_sites's, not TL's `to_tokens` (which follows TL's own `prepend_bos`). Raises InterpError in one
    line for an architecture TL cannot bridge."""
    sources, force_eager_attention, _ = _import_transformer_lens()
    architecture = lens_architecture(text_lm.model)
    twin = _twin(text_lm.model)
    force_eager_attention(twin)
    try:
        bridge = sources.build_bridge_from_module(twin, architecture, hf_config=twin.config, tokenizer=None,
                                                  model_name=text_lm.name)
    except (ValueError, KeyError, AttributeError, NotImplementedError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InterpError(f"TransformerLens 4.3.0 cannot bridge {text_lm.name} ({type(text_lm.model).__name__}, "
                          f"adapter {architecture}): {first}") from error
    tokenizer = copy.deepcopy(text_lm.tokenizer)
    bridge.cfg.tokenizer_prepends_bos, bridge.cfg.tokenizer_appends_eos = sources.detect_tokenizer_bos_eos(tokenizer)
    bridge.tokenizer = tokenizer  # a first assignment: TL records it without set-up (bridge_core.py:131-166)
    _log.info("TransformerLens bridge over %s: adapter %s, %d layers, weights shared", text_lm.name, architecture,
              bridge.cfg.n_layers)
    return bridge.eval()


def _input_ids(text_lm: TextLM, text: str | Sequence[int], prompt: str | None) -> Tensor:
    """(1, seq) ids: token ids as given; text in the prompt's placeholder as the cascades render it
    (TextLM.prompt_ids); or, without a prompt, the text alone with BOS as the TextLM's tokenizer puts it."""
    if not isinstance(text, str):
        ids = list(text)
    elif prompt is not None:
        ids = text_lm.prompt_ids(text, prompt)
    else:
        ids = encode_context(text_lm.tokenizer, text)
    return torch.tensor([ids], dtype=torch.long)


@torch.no_grad()
def run_with_sites(bridge: TransformerBridge, text_lm: TextLM, text: str | Sequence[int], *,
                   prompt: str | None = None, sites: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """TL's `run_with_cache` keyed by the project's site names: (logits (1, seq, vocab), {site: (1, seq, d)}).

    text: a string (tokenised by `text_lm`, in `prompt`'s placeholder if given, as a cascade's LLM reads its
    transcript) or token ids. sites: the sites to keep, in forward order (default: llm.embed and every
    llm.layers.{i}). `bridge` must be to_transformer_lens(text_lm). Raises SiteError for a site the LLM lacks.
    """
    table = site_hook_table(bridge)
    wanted = list(table) if sites is None else list(sites)
    unknown = [site for site in wanted if site not in table]
    if unknown:
        raise SiteError(f"unknown site {unknown[0]!r}; the bridged LLM has {describe_sites(list(table))}")
    device = next(bridge.original_model.parameters()).device
    logits, cache = bridge.run_with_cache(_input_ids(text_lm, text, prompt).to(device),
                                          names_filter=[table[site] for site in wanted])
    return logits, {site: cache[table[site]] for site in wanted}
