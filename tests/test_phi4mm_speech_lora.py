"""phi4mm:PATH loads the release's speech LoRA (speech-lora/, a peft adapter) and keeps it on for audio, as
Phi-4-multimodal-instruct does; a folder without it is refused unless the spec says speech_lora=off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.errors import InterpError
from interp.models.base import describe_model
from interp.models.checkpoints import LoadOptions, load_checkpoint
from interp.models.tiny import tiny_phi4mm
from interp.models.tiny_releases import add_tiny_speech_lora, save_tiny_phi4mm
from interp.models.weights import WeightsMissing
from tests.helpers import capture_sites, reference_hidden_states

PROMPT = "What is the sentiment? <|audio|> Answer with one word."


def load(spec: str) -> object:
    return load_checkpoint(spec, options=LoadOptions())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phi4mm")
    save_tiny_phi4mm(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (0.6, 0.4)]


def logits(system, audio: list[np.ndarray]) -> torch.Tensor:
    return system.logits(system.prepare(audio, [PROMPT] * len(audio)))


def test_the_speech_lora_is_loaded_on_and_changes_the_logits(folder, audio) -> None:
    """The loaded model computes what tiny-phi4mm with the same adapter (peft, in memory) computes, not what it
    computes without it; the choice is in the model description that caches and predictions record."""
    loaded = load(f"phi4mm:{folder}")
    reference = tiny_phi4mm(seed=0)
    without = logits(reference, audio)
    add_tiny_speech_lora(reference.model, seed=0)
    assert torch.equal(logits(loaded, audio), logits(reference, audio))
    assert not torch.allclose(logits(loaded, audio), without, atol=1e-3)
    assert describe_model(loaded, f"phi4mm:{folder}")["weights"] == {"speech_lora": "on"}


def test_speech_lora_off_loads_the_model_without_it(folder, audio) -> None:
    spec = f"phi4mm:{folder},speech_lora=off"
    loaded = load(spec)
    assert torch.equal(logits(loaded, audio), logits(tiny_phi4mm(seed=0), audio))
    assert describe_model(loaded, spec)["weights"] == {"speech_lora": "off"}


def test_llm_sites_see_the_lora_active_layers(folder, audio) -> None:
    """llm.layers.{i} captured through the adapter's sites is HF's output_hidden_states[i + 1] with the LoRA on,
    and differs from the same site without the LoRA."""
    loaded, off = load(f"phi4mm:{folder}"), load(f"phi4mm:{folder},speech_lora=off")
    batch = loaded.prepare(audio, [PROMPT] * len(audio))
    captured = capture_sites(loaded, batch, ["llm.layers.1"])["llm.layers.1"]
    assert torch.allclose(captured, reference_hidden_states(loaded, batch)[2], atol=1e-5)
    assert not torch.allclose(captured, capture_sites(off, batch, ["llm.layers.1"])["llm.layers.1"], atol=1e-3)


def test_a_folder_without_speech_lora_is_refused_in_one_line(tmp_path) -> None:
    save_tiny_phi4mm(tmp_path, seed=0, speech_lora=False)
    with pytest.raises(WeightsMissing) as caught:
        load(f"phi4mm:{tmp_path}")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"{tmp_path} has no speech-lora/adapter_config.json: Phi-4-multimodal-instruct hears audio "
                       "through that speech LoRA; copy the release's speech-lora/ folder there, or write "
                       f"phi4mm:{tmp_path},speech_lora=off to study the model without it")
    assert load(f"phi4mm:{tmp_path},speech_lora=off").weights == {"speech_lora": "off"}


def test_an_adapter_key_the_model_does_not_use_is_refused(tmp_path) -> None:
    save_tiny_phi4mm(tmp_path, seed=0)
    weights = tmp_path / "speech-lora" / "adapter_model.safetensors"
    key = "base_model.model.model.layers.0.mlp.extra.lora_A.weight"
    save_file({**load_file(weights), key: torch.zeros(2, 2)}, weights, metadata={"format": "pt"})
    with pytest.raises(WeightsMissing, match="checkpoint keys the model does not use") as caught:
        load(f"phi4mm:{tmp_path}")
    assert str(tmp_path / "speech-lora") in str(caught.value) and "extra" in str(caught.value)


def test_an_unknown_phi4mm_option_names_the_spelling(folder) -> None:
    with pytest.raises(InterpError, match=r"cannot read 'speech_lora=no'.*phi4mm:PATH\[,speech_lora=off\]"):
        load(f"phi4mm:{folder},speech_lora=no")
