"""tiny-ultravox: fixie-ai key layout, audio positions, sites against output_hidden_states, choice scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.models.tiny import tiny_ultravox, tiny_ultravox_config
from interp.models.ultravox import UltravoxModel

PROMPT = "What is the sentiment? <|audio|> Answer with one word."


@pytest.fixture(scope="module")
def model():
    return tiny_ultravox(seed=0)


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (2.0, 1.3)]


def _capture(model, batch, names: list[str]) -> dict[str, torch.Tensor]:
    """Run the model with forward hooks on the named sites; returns each site's activation."""
    sites, captured, handles = model.sites(), {}, []
    for name in names:
        site = sites[name]
        if site.take == "output":
            handles.append(site.module.register_forward_hook(
                lambda module, args, output, name=name: captured.__setitem__(name, output)))
        else:
            handles.append(site.module.register_forward_pre_hook(
                lambda module, args, name=name: captured.__setitem__(name, args[0])))
    try:
        model.logits(batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def test_fixie_key_layout_round_trips_strictly(tmp_path) -> None:
    """A state dict saved with fixie-ai's prefixes loads back into a fresh model with strict=True."""
    model = tiny_ultravox(seed=1).model
    state = model.state_dict()
    assert {key.split(".")[0] for key in state} == {"audio_tower", "multi_modal_projector", "language_model"}
    assert "multi_modal_projector.linear_1.weight" in state and "multi_modal_projector.ln_mid.weight" in state
    save_file({k: v.contiguous() for k, v in state.items() if k != "language_model.lm_head.weight"},
              tmp_path / "model.safetensors")
    fresh = UltravoxModel(tiny_ultravox_config(vocab_size=model.config.text_config.vocab_size))
    loaded = load_file(tmp_path / "model.safetensors")
    missing, unexpected = fresh.load_state_dict(loaded, strict=False)
    assert unexpected == [] and set(missing) <= {"language_model.lm_head.weight"}  # tied to the embeddings
    fresh.tie_weights()
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_audio_positions_match_ultravox_token_count(model, audio) -> None:
    """Each item gets ceil(mel_frames / 16) audio positions, and the projector emits exactly that many rows."""
    batch = model.prepare(audio, [PROMPT, PROMPT])
    mel_frames = batch.inputs["audio_lens"].tolist()
    assert mel_frames == [200, 130]
    assert batch.audio_mask.sum(-1).tolist() == [math.ceil(f / 16) for f in mel_frames]
    projected = _capture(model, model.prepare(audio[:1], [PROMPT]), ["projector"])["projector"]
    assert projected.shape[1] == math.ceil(mel_frames[0] / 16)


def test_audio_spans_cover_the_audio_in_160ms_steps(model, audio) -> None:
    batch = model.prepare(audio, [PROMPT, PROMPT])
    spans = batch.audio_span[1][batch.audio_mask[1].numpy()]
    assert spans[0].tolist() == [0.0, 0.16] and spans[-1][1] == pytest.approx(1.3)
    assert np.isnan(batch.audio_span[1][~batch.audio_mask[1].numpy()]).all()


def test_llm_layer_sites_equal_output_hidden_states(model, audio) -> None:
    """llm.layers.i is HF's hidden_states[i+1]; the last one, which HF returns after the final norm,
    equals it once the model's own final norm is applied."""
    batch = model.prepare(audio, [PROMPT, PROMPT])
    layers = model.model.config.text_config.num_hidden_layers
    names = ["llm.embed"] + [f"llm.layers.{i}" for i in range(layers)]
    captured = _capture(model, batch, names)
    inputs = batch.inputs
    with torch.no_grad():
        embeds = model.model.embed(inputs["input_ids"], inputs["audio_values"], inputs["audio_lens"],
                                   inputs["audio_token_start_idx"], inputs["audio_token_len"])
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                            output_hidden_states=True).hidden_states
    torch.testing.assert_close(captured["llm.embed"], hidden[0], rtol=0, atol=0)
    for i in range(layers - 1):
        torch.testing.assert_close(captured[f"llm.layers.{i}"], hidden[i + 1], rtol=1e-6, atol=1e-6)
    last = captured[f"llm.layers.{layers - 1}"]
    torch.testing.assert_close(model.final_norm(last), hidden[-1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(last, hidden[-1])


def test_choice_scores_equal_manual_log_softmax_sum(model, audio) -> None:
    """score_choices = Σ log softmax over the choice tokens, recomputed by hand one choice at a time."""
    choices = ["positive", "negative", "not sure at all"]
    scores = model.score_choices(audio[0], PROMPT, choices)
    for choice, score in zip(choices, scores):
        ids = model.tokenizer(choice, add_special_tokens=False)["input_ids"]
        batch = model._encode([audio[0]], [PROMPT], [ids])
        log_probs = torch.log_softmax(model.logits(batch)[0].double(), dim=-1)
        end = batch.input_ids.shape[1]
        manual = sum(float(log_probs[t - 1, batch.input_ids[0, t]]) for t in range(end - len(ids), end))
        assert score == pytest.approx(manual, abs=1e-5)  # batched (padded) vs single float32 matmuls
    assert len(set(np.round(scores, 6))) == 3


def test_prompt_needs_exactly_one_placeholder(model, audio) -> None:
    from interp.errors import InterpError

    with pytest.raises(InterpError, match="exactly one <\\|audio\\|>"):
        model.prepare(audio[:1], ["no placeholder here"])


def test_generate_is_greedy_and_deterministic(model, audio) -> None:
    assert model.generate(audio[0], PROMPT, max_new_tokens=4) == model.generate(audio[0], PROMPT, max_new_tokens=4)
