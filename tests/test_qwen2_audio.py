"""tiny-qwen2-audio: audio positions as the encoder emits them, sites against output_hidden_states, choice scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.models.tiny import tiny_qwen2_audio
from tests.helpers import capture_sites

PROMPT = "What is the sentiment? <|audio|> Answer with one word."


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2_audio(seed=0)


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (2.0, 1.3)]


def test_audio_positions_match_the_encoder_output_lengths(model, audio) -> None:
    """One <|AUDIO|> per encoder output (conv stride 2, then pool 2: 25 per second), contiguous, between
    <|audio_bos|> and <|audio_eos|>."""
    batch = model.prepare(audio, [PROMPT, PROMPT])
    mel_frames = batch.inputs["feature_attention_mask"].sum(-1)
    assert mel_frames.tolist() == [200, 130]
    _, encoder_lengths = model.model.model.audio_tower._get_feat_extract_output_lengths(mel_frames)
    assert batch.audio_mask.sum(-1).tolist() == encoder_lengths.tolist() == [50, 32]
    tokens = model.tokenizer
    for row, length in zip(range(2), encoder_lengths.tolist()):
        positions = batch.audio_mask[row].nonzero().squeeze(-1)
        start, end = int(positions[0]), int(positions[-1]) + 1
        assert end - start == length
        assert batch.input_ids[row, start - 1] == tokens.convert_tokens_to_ids("<|audio_bos|>")
        assert batch.input_ids[row, end] == tokens.convert_tokens_to_ids("<|audio_eos|>")


def test_audio_spans_cover_the_audio_in_40ms_steps(model, audio) -> None:
    batch = model.prepare(audio, [PROMPT, PROMPT])
    spans = batch.audio_span[1][batch.audio_mask[1].numpy()]
    assert spans[0].tolist() == [0.0, 0.04] and spans[-1].tolist() == pytest.approx([1.24, 1.28])
    assert np.isnan(batch.audio_span[1][~batch.audio_mask[1].numpy()]).all()


def test_audio_sites_cover_the_30s_window_and_feed_the_audio_positions(model, audio) -> None:
    """Encoder rows are 20 ms over the padded 30 s window; the projector's first rows are what the LLM
    gets at the audio positions."""
    batch = model.prepare(audio, [PROMPT, PROMPT])
    sites = model.sites()
    captured = capture_sites(model, batch, ["audio.layers.1", "projector", "llm.embed"])
    assert captured["audio.layers.1"].shape[1] * sites["audio.layers.1"].seconds_per_row == pytest.approx(30.0)
    assert captured["projector"].shape[1] * sites["projector"].seconds_per_row == pytest.approx(30.0)
    for row in range(2):
        count = int(batch.audio_mask[row].sum())
        torch.testing.assert_close(captured["llm.embed"][row][batch.audio_mask[row]],
                                   captured["projector"][row, :count], rtol=0, atol=0)


def test_audio_longer_than_the_window_is_refused(model) -> None:
    with pytest.raises(InterpError, match="at most 30 s"):
        model.prepare([np.zeros(16000 * 31, dtype=np.float32)], [PROMPT])

