"""TransformerLens's TransformerBridge over the project's text LLMs (interp.models.transformer_lens_bridge).

The bridge's residual stream is compared with transformers' output_hidden_states of the same model on the same
tokens, run with eager attention as the bridge runs (hidden_states[i + 1] is the output of layer i; the last one
has the final norm applied, so the last layer is compared through the norm). Fast: the tiny random instances of
the real checkpoints' LLM classes (Ultravox's Llama, Qwen2-Audio's Qwen2, Phi-4-MM's Phi-4 decoder, and a Phi-3
with Phi-4-mini's partial rotary + longrope); slow: the mini stack's SmolLM2 and Gemma-3 from GGUF.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, BioGptConfig, BioGptForCausalLM, Phi3Config, Phi3ForCausalLM

from interp.errors import InterpError
from interp.models.own_backbone import own_text_lm
from interp.models.text_lm import TextLM
from interp.models.tiny import tiny_phi4mm, tiny_qwen2_audio, tiny_text_lm, tiny_tokenizer, tiny_ultravox
from interp.models.transformer_lens_bridge import (
    SITE_HOOKS,
    hook_for_site,
    lens_architecture,
    run_with_sites,
    site_for_hook,
    site_hook_table,
    to_transformer_lens,
)
from interp.sites import SiteError

TEXT, PROMPT = "the movie was wonderful and i loved it", "Is this review positive or negative? <|audio|>"
ATOL = 1e-4


def _phi4_mini_like() -> TextLM:
    """A tiny Phi-3 with Phi-4-mini's rotary: partial (0.75) and longrope, its long factors in use past 64."""
    tokenizer = tiny_tokenizer()
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "short_factor": [1.0] * 9,
            "long_factor": [1.5] * 9, "factor": 16.0}
    config = Phi3Config(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                        original_max_position_embeddings=64, rope_parameters=rope, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    return TextLM(Phi3ForCausalLM(config), tokenizer, name="tiny-phi3-longrope")


TINY: dict[str, Callable[[], TextLM]] = {
    "tiny-llama": tiny_text_lm,
    "ultravox-llama": lambda: own_text_lm(tiny_ultravox()),
    "qwen2-audio-qwen2": lambda: own_text_lm(tiny_qwen2_audio()),
    "phi4mm-phi4": lambda: own_text_lm(tiny_phi4mm()),
    "phi4-mini-rotary": _phi4_mini_like,
}


@pytest.fixture(scope="module")
def tiny_llama() -> tuple[TextLM, object]:
    lm = tiny_text_lm()
    return lm, to_transformer_lens(lm)


def _hf_hidden_states(lm: TextLM, ids: list[int]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(logits, hidden_states) of the TextLM's own model, with eager attention as the bridge runs it (sdpa
    reorders the kernel's ops: up to 5e-4 absolute on SmolLM2's residual stream, whose massive activations reach
    1e4, and 1.2e-2 on Gemma-3's, which reach 8e4); the model's attention implementation is put back after."""
    before = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lm.model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        lm.model.set_attn_implementation(before)
    return out.logits, out.hidden_states


def _max_differences(lm: TextLM, ids: list[int]) -> dict[str, float]:
    """Max |bridge − transformers| of the logits, llm.embed, the layers before the last, and the last through
    the final norm; also checks that the bridge's sites are the TextLM's, in order."""
    bridge = to_transformer_lens(lm)
    logits, acts = run_with_sites(bridge, lm, ids)
    assert list(acts) == list(lm.sites())
    hf_logits, hidden = _hf_hidden_states(lm, ids)
    last = len(hidden) - 2
    with torch.no_grad():
        final = lm.final_norm(acts[f"llm.layers.{last}"])
    return {"logits": (logits - hf_logits).abs().max().item(),
            "llm.embed": (acts["llm.embed"] - hidden[0]).abs().max().item(),
            "llm.layers": max((acts[f"llm.layers.{i}"] - hidden[i + 1]).abs().max().item() for i in range(last)),
            "final_norm(last)": (final - hidden[-1]).abs().max().item()}


@pytest.mark.parametrize("name", list(TINY))
def test_the_bridges_residual_stream_is_the_text_lms_layers(name: str) -> None:
    lm = TINY[name]()
    ids = list(range(5, 105))  # 100 tokens: past the Phi-3's original 64 positions, so longrope's long factors
    differences = _max_differences(lm, ids)
    assert max(differences.values()) < ATOL, differences


@pytest.mark.slow
@pytest.mark.parametrize("which", ["_smollm2", "_gemma"])
def test_the_mini_stacks_gguf_llms_boot_and_match_their_layers(which: str) -> None:
    from interp.models import mini

    lm = getattr(mini, which)()
    differences = _max_differences(lm, lm.prompt_ids(TEXT, PROMPT))
    assert max(differences.values()) < ATOL, differences
    assert lm.model.config._attn_implementation == "sdpa"  # the shared LLM keeps its own attention


def test_the_site_table_round_trips_for_every_layer(tiny_llama) -> None:
    lm, bridge = tiny_llama
    table = site_hook_table(bridge)
    assert list(table) == list(lm.sites())
    for site, hook in table.items():
        assert hook == hook_for_site(site) and site_for_hook(hook) == site
        assert hook in bridge.hook_dict
    assert bridge.hook_dict["blocks.0.hook_resid_pre"] is bridge.hook_dict["blocks.0.hook_in"]
    for i in range(bridge.cfg.n_layers):
        assert bridge.hook_dict[table[f"llm.layers.{i}"]] is bridge.hook_dict[f"blocks.{i}.hook_out"]
    assert set(SITE_HOOKS) == {"llm.embed", "llm.layers.{i}"}
    with pytest.raises(SiteError):
        hook_for_site("projector")
    with pytest.raises(SiteError):
        site_for_hook("blocks.1.hook_resid_pre")


def test_run_with_sites_renders_the_prompt_as_the_text_lm_and_keeps_the_sites_asked(tiny_llama) -> None:
    lm, bridge = tiny_llama
    logits, acts = run_with_sites(bridge, lm, TEXT, prompt=PROMPT, sites=["llm.layers.2", "llm.embed"])
    same_logits, same = run_with_sites(bridge, lm, lm.prompt_ids(TEXT, PROMPT))
    assert list(acts) == ["llm.layers.2", "llm.embed"]
    assert torch.equal(logits, same_logits) and torch.equal(acts["llm.layers.2"], same["llm.layers.2"])
    assert acts["llm.embed"].shape == (1, len(lm.prompt_ids(TEXT, PROMPT)), lm.model.config.hidden_size)
    with pytest.raises(SiteError, match="llm.layers.7"):
        run_with_sites(bridge, lm, TEXT, sites=["llm.layers.7"])


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any network connection, and any from_pretrained of a config or tokenizer, fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the bridge reached for a hub or a file")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(AutoConfig, "from_pretrained", refuse)
    yield


def test_the_bridge_shares_the_weights_and_leaves_the_text_lm_as_it_was(no_hub) -> None:
    lm = tiny_text_lm()
    state = {key: value.clone() for key, value in lm.model.state_dict().items()}
    classes = [type(module) for module in lm.model.modules()]
    calls = []
    hook = lm.sites()["llm.layers.1"].module.register_forward_hook(lambda *args: calls.append(1))
    bridge = to_transformer_lens(lm)
    hook.remove()
    run_with_sites(bridge, lm, TEXT)
    assert not calls  # a hook in place at boot stays with the TextLM
    own = {tensor.data_ptr() for tensor in lm.model.parameters()}
    assert {tensor.data_ptr() for tensor in bridge.original_model.parameters()} == own
    assert bridge.tokenizer is not lm.tokenizer
    bridge.enable_compatibility_mode()  # folds norms and centres weights: on new tensors, not the TextLM's
    assert [type(module) for module in lm.model.modules()] == classes
    assert lm.model.config._attn_implementation == "sdpa"
    assert all(torch.equal(value, state[key]) for key, value in lm.model.state_dict().items())


def test_an_architecture_transformer_lens_lacks_is_refused_in_one_line() -> None:
    tokenizer = tiny_tokenizer()
    config = BioGptConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, pad_token_id=0)
    lm = TextLM(BioGptForCausalLM(config), tokenizer, name="tiny-biogpt")
    with pytest.raises(InterpError, match="no architecture adapter for BioGptForCausalLM") as refused:
        to_transformer_lens(lm)
    assert "\n" not in str(refused.value)
    assert lens_architecture(tiny_phi4mm().model) == "Phi3ForCausalLM"
