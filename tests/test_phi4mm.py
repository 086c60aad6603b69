"""tiny-phi4mm: audio positions as the processor inserts them, sites against output_hidden_states, choice scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from transformers import Phi4MultimodalProcessor

from interp.errors import InterpError
from interp.models.tiny import tiny_phi4mm
from tests.helpers import capture_sites

PROMPT = "What is the sentiment? <|audio|> Answer with one word."


@pytest.fixture(scope="module")
def model():
    return tiny_phi4mm(seed=0)


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (2.0, 1.3)]


def test_audio_positions_match_the_processor_and_the_encoder(model, audio) -> None:
    """One <|audio|> per 8 fbank frames (25 ms window, 10 ms hop: 12.5 per second), contiguous; the count the
    real processor's replace_audio_token inserts (called unbound: its constructor needs Pillow and
    torchvision for the image processor) and the number of rows the conformer emits."""
    batch = model.prepare(audio, [PROMPT, PROMPT])
    frames = (np.array([len(a) for a in audio]) - 400) // 160 + 1
    expected = [int(n) for n in np.ceil(frames / 8)]
    assert expected == [25, 16]
    assert batch.audio_mask.sum(-1).tolist() == expected
    features = model.feature_extractor(audio, sampling_rate=16000)
    processor = SimpleNamespace(audio_token=model.audio_token)
    for row, count in enumerate(expected):
        assert Phi4MultimodalProcessor.replace_audio_token(processor, features, audio_idx=row) == "<|audio|>" * count
        positions = batch.audio_mask[row].nonzero().squeeze(-1)
        assert int(positions[-1]) - int(positions[0]) + 1 == count
    for clip, count in zip(audio, expected):
        single = model.prepare([clip], [PROMPT])
        assert capture_sites(model, single, ["audio.layers.1"])["audio.layers.1"].shape[1] == count


def test_audio_spans_cover_the_audio_in_80ms_steps(model, audio) -> None:
    batch = model.prepare(audio, [PROMPT, PROMPT])
    spans = batch.audio_span[1][batch.audio_mask[1].numpy()]
    assert spans[0].tolist() == [0.0, 0.08] and spans[-1].tolist() == pytest.approx([1.2, 1.28])
    assert np.isnan(batch.audio_span[1][~batch.audio_mask[1].numpy()]).all()


def test_audio_shorter_than_one_window_is_refused(model) -> None:
    with pytest.raises(InterpError, match="at least 400 samples"):
        model.prepare([np.zeros(399, dtype=np.float32)], [PROMPT])

