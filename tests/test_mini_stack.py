"""The mini stack as users get it by name: registry, mini-ultravox wiring, cascades, CLI."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from interp.data.tts import PiperSettings, open_engine
from interp.errors import InterpError
from interp.models.base import describe_model
from interp.models.mini import MINI_ULTRAVOX_PROJECTOR, MODEL_CARDS, build_mini_ultravox, load_model, weights_of
from interp.resources import resource_path
from interp.text_metrics import word_error_rate
from tests.helpers import run_cli


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(InterpError, match="known models: mini-ultravox, mini-cascade"):
        load_model("gpt-5")


def test_models_list_shows_every_model_with_its_licence() -> None:
    result = run_cli("models", "list")
    assert result.returncode == 0
    for name in MODEL_CARDS:
        assert name in result.stdout
    assert "Gemma Terms of Use" in result.stdout


def test_ask_refuses_audio_at_the_wrong_rate(tmp_path) -> None:
    import soundfile as sf

    sf.write(tmp_path / "8k.wav", np.zeros(8000, dtype=np.float32), 8000)
    result = run_cli("ask", "--model", "tiny-ultravox", "--audio", tmp_path / "8k.wav")
    assert result.returncode == 2 and "8000 Hz" in result.stderr and result.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return open_engine("piper").speak("The team won the cup final on Sunday.", PiperSettings(seed=0)).samples


@pytest.mark.slow
def test_mini_ultravox_hears_through_whisper_base_and_smollm2(speech) -> None:
    """Sites: 6 encoder layers, projector, 30 LLM layers; one audio position per 160 ms; its encoder
    reproduces HF's WhisperEncoder on a full 30 s window."""
    model = load_model("mini-ultravox")
    sites = list(model.sites())
    assert sites[:7] == [f"audio.layers.{i}" for i in range(6)] + ["projector"]
    assert sites[-1] == "llm.layers.29" and len(sites) == 6 + 1 + 1 + 30
    batch = model.prepare([speech], ["Repeat: <|audio|>"])
    assert int(batch.audio_mask.sum()) == math.ceil(int(batch.inputs["audio_lens"][0]) / 16)
    window = model.feature_extractor([speech], sampling_rate=16000, return_tensors="pt")["input_features"]
    reference = WhisperEncoder(model.model.audio_tower.config)
    reference.load_state_dict(model.model.audio_tower.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.model.audio_tower(window), reference(window).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
    scores = model.score_choices(speech, "Topic of <|audio|>?", ["sports", "business"])
    assert scores.shape == (2,) and np.isfinite(scores).all()


@pytest.mark.slow
def test_mini_ultravox_carries_the_trained_projector_and_repeats_what_it_hears(speech) -> None:
    """By default mini-ultravox loads the shipped projector (≤ 20 MB, every key, strict). That projector is weak
    on sentences unlike its training data (docs/mini-ultravox.md), but it carries the audio: on a
    sentence it never trained on it gets part of the words, where a random projector gets none."""
    from safetensors.torch import load_file

    path = resource_path(MINI_ULTRAVOX_PROJECTOR)
    assert path.stat().st_size <= 20 * 2**20
    shipped = load_file(str(path))
    model = load_model("mini-ultravox")
    state = model.model.multi_modal_projector.state_dict()
    assert set(state) == set(shipped)
    assert all(torch.equal(state[key], shipped[key]) for key in shipped)
    # Its fingerprint goes into caches and behave runs, which refuse work made with another projector.
    assert describe_model(model, "mini-ultravox")["weights"] == {
        "projector": MINI_ULTRAVOX_PROJECTOR, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert weights_of("mini-ultravox") == model.weights  # what a study folder records without loading the model

    sentence = ["The team won the cup final on Sunday."]
    prompt = "Repeat exactly what you heard: <|audio|>"
    assert word_error_rate(sentence, [model.generate(speech, prompt, max_new_tokens=20)]) <= 0.7
    untrained = build_mini_ultravox(trained=False)
    assert untrained.weights == weights_of("mini-ultravox", trained=False) != model.weights
    assert word_error_rate(sentence, [untrained.generate(speech, prompt, max_new_tokens=20)]) >= 0.9


@pytest.mark.slow
def test_mini_cascade_answers_from_its_own_transcript(speech) -> None:
    """The cascade's scores are the LLM's scores on the Whisper-base transcript of the audio."""
    cascade = load_model("mini-cascade")
    transcript = cascade.transcribe(speech)
    assert "cup final" in transcript.lower()
    prompt = "What is this news about? <|audio|> Answer with one word."
    choices = ["World", "Sports", "Business", "Science"]
    np.testing.assert_array_equal(cascade.score_choices(speech, prompt, choices),
                                  cascade.llm.score_choices(transcript, prompt, choices))
