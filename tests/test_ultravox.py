"""tiny-ultravox: fixie-ai key layout, audio positions, sites against output_hidden_states, choice scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.models.tiny import tiny_ultravox, tiny_ultravox_config
from interp.models.ultravox import UltravoxModel
from tests.helpers import capture_sites

PROMPT = "What is the sentiment? <|audio|> Answer with one word."


@pytest.fixture(scope="module")
def model():
    return tiny_ultravox(seed=0)


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (2.0, 1.3)]


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
    projected = capture_sites(model, model.prepare(audio[:1], [PROMPT]), ["projector"])["projector"]
    assert projected.shape[1] == math.ceil(mel_frames[0] / 16)


def test_audio_spans_cover_the_audio_in_160ms_steps(model, audio) -> None:
    batch = model.prepare(audio, [PROMPT, PROMPT])
    spans = batch.audio_span[1][batch.audio_mask[1].numpy()]
    assert spans[0].tolist() == [0.0, 0.16] and spans[-1][1] == pytest.approx(1.3)
    assert np.isnan(batch.audio_span[1][~batch.audio_mask[1].numpy()]).all()



def test_config_leaves_the_configs_it_was_given_unchanged() -> None:
    """Building an Ultravox around an already-loaded LLM must not switch that LLM's attention path
    (transformers 5.24's PretrainedConfig resets sub-configs' attention implementation)."""
    from interp.models.ultravox import UltravoxConfig

    base = tiny_ultravox_config(vocab_size=400)
    text, audio = base.text_config, base.audio_config
    text._attn_implementation = audio._attn_implementation = "sdpa"
    UltravoxConfig(audio, text, hidden_size=64)
    assert text._attn_implementation == "sdpa" and audio._attn_implementation == "sdpa"
