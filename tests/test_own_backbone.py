"""cascade:asr=PATH,llm=self,speech=SPEC: the speech LLM's own language model reads the transcript, sharing the
speech model's tensors; Phi-4-MM's reads it without the speech LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp.behavior import parse_systems
from interp.errors import InterpError
from interp.models.cascade import Cascade
from interp.models.checkpoints import LoadOptions, load_checkpoint
from interp.models.text_lm import TextLM
from interp.models.tiny import tiny_phi4mm
from interp.models.tiny_releases import add_tiny_speech_lora, save_tiny_checkpoints

PROMPT = "What is the sentiment? <|audio|> Answer with one word."
CHOICES = ["positive", "negative"]
TRANSCRIPT = "the movie was wonderful and i loved it"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("releases"))


def speech_spec(kind: str, folders: dict[str, str]) -> str:
    if kind == "ultravox":
        return f"ultravox:{folders['ultravox']},audio={folders['ultravox-audio']},llm={folders['llama']}"
    return f"{kind}:{folders[kind]}"


def load(spec: str, loaded: dict[str, object] | None = None) -> object:
    return load_checkpoint(spec, options=LoadOptions(), loaded=loaded)


def data_ptrs(module: torch.nn.Module) -> set[int]:
    return {parameter.data_ptr() for parameter in module.parameters()}


@pytest.mark.parametrize("kind", ["qwen2-audio", "ultravox", "phi4mm"])
def test_the_own_backbone_cascade_shares_the_speech_models_tensors(folders, kind) -> None:
    """No weight is copied: the embedding, layer 0's down projection and every other parameter of the cascade's
    LLM are storage of the loaded speech model; loaded again on its own, it scores the same."""
    speech_spec_text = speech_spec(kind, folders)
    speech = load(speech_spec_text)
    spec = f"cascade:asr={folders['whisper']},llm=self,speech={speech_spec_text}"
    cascade = load(spec, {speech_spec_text: speech})
    assert isinstance(cascade, Cascade) and isinstance(cascade.llm, TextLM) and cascade.name == spec
    llm = cascade.llm.model
    assert llm.get_input_embeddings().weight.data_ptr() == speech.model.get_input_embeddings().weight.data_ptr()
    down = speech.sites()["llm.layers.0"].module.mlp.down_proj
    assert llm.model.layers[0].mlp.down_proj.weight.data_ptr() == getattr(down, "base_layer", down).weight.data_ptr()
    assert data_ptrs(llm) <= data_ptrs(speech.model)
    assert cascade.llm.tokenizer is speech.tokenizer
    alone = load(spec)
    assert data_ptrs(alone.llm.model).isdisjoint(data_ptrs(speech.model))
    assert (alone.llm.score_choices(TRANSCRIPT, PROMPT, CHOICES)
            == cascade.llm.score_choices(TRANSCRIPT, PROMPT, CHOICES)).all()


@pytest.mark.parametrize("kind", ["qwen2-audio", "ultravox"])
def test_the_own_llm_computes_what_the_speech_model_computes_on_text(folders, kind) -> None:
    """Without audio, the speech model's own forward is its language model's: the cascade's logits equal it."""
    speech = load(speech_spec(kind, folders))
    llm = load(f"cascade:asr={folders['whisper']},llm=self,speech={speech_spec(kind, folders)}",
               {speech_spec(kind, folders): speech}).llm
    ids = torch.tensor([llm.prompt_ids(TRANSCRIPT, PROMPT)])
    with torch.no_grad():
        inner = speech.model.language_model if kind == "ultravox" else speech.model
        assert torch.equal(llm.model(input_ids=ids).logits, inner(input_ids=ids).logits)


def test_phi4mm_own_llm_reads_text_without_the_speech_lora(folders) -> None:
    """Its text logits are the base model's (no LoRA) exactly, and the LoRA would have changed them: the speech
    model it shares tensors with keeps the LoRA on."""
    spec = speech_spec("phi4mm", folders)
    speech = load(spec)
    llm = load(f"cascade:asr={folders['whisper']},llm=self,speech={spec}", {spec: speech}).llm
    base = tiny_phi4mm(seed=0)
    ids = torch.tensor([llm.prompt_ids(TRANSCRIPT, PROMPT)])
    with torch.no_grad():
        own, without = llm.model(input_ids=ids).logits, base.model(input_ids=ids).logits
        with_lora = speech.model(input_ids=ids).logits
    assert torch.equal(own, without)
    assert not torch.allclose(with_lora, without, atol=1e-3)
    assert (llm.score_choices(TRANSCRIPT, PROMPT, CHOICES)
            == TextLM(base.model, base.tokenizer, name="base").score_choices(TRANSCRIPT, PROMPT, CHOICES)).all()
    add_tiny_speech_lora(base.model, seed=0)
    with torch.no_grad():
        assert torch.equal(speech.model(input_ids=ids).logits, base.model(input_ids=ids).logits)


@pytest.mark.parametrize(("tail", "expected"), [
    ("llm=self", "llm=self goes with speech=SPEC last"),
    ("llm={llama},speech=phi4mm:{phi4mm}", "llm=self goes with speech=SPEC last"),
    ("llm=self,speech=cascade:asr={whisper},llm={llama}", "SPEC one of qwen2-audio:PATH"),
])
def test_a_malformed_own_backbone_spec_says_how_to_write_it(folders, tail, expected) -> None:
    spec = f"cascade:asr={folders['whisper']}," + tail.format(**{key.replace('-', '_'): value
                                                                  for key, value in folders.items()})
    with pytest.raises(InterpError, match=expected) as caught:
        load(spec)
    assert "\n" not in str(caught.value)


def test_a_system_list_keeps_the_speech_spec_whole(folders) -> None:
    """Ultravox's spec carries commas and its own llm=: --systems and study plans still read one system."""
    speech = speech_spec("ultravox", folders)
    own = f"cascade:asr={folders['whisper']},llm=self,speech={speech},name=own"
    parsed = parse_systems(f"{speech},{own}")
    assert [(system.spec, system.name) for system in parsed] == [
        (speech, f"ultravox-{Path(folders['ultravox']).name}"), (own.removesuffix(",name=own"), "own")]
