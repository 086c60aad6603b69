"""The SpeechLM contract, checked on the tiny instance of every adapter: sites against HF's own
output_hidden_states, the choice-scoring rule against a manual log-softmax sum, placeholder handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.models.tiny import tiny_phi4mm, tiny_qwen2_audio, tiny_ultravox
from tests.helpers import capture_sites, reference_hidden_states

PROMPT = "What is the sentiment? <|audio|> Answer with one word."


CASES = {"tiny-ultravox": tiny_ultravox, "tiny-qwen2-audio": tiny_qwen2_audio, "tiny-phi4mm": tiny_phi4mm}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return CASES[request.param](seed=0), reference_hidden_states


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (2.0, 1.3)]


def test_adapter_satisfies_the_protocol(case) -> None:
    model, _ = case
    assert isinstance(model, SpeechLM)
    names = list(model.sites())
    assert names[0] == "audio.layers.0" and "projector" in names and "llm.embed" in names


def test_llm_layer_sites_equal_output_hidden_states(case, audio) -> None:
    """llm.layers.i is HF's hidden_states[i+1]; the last one, which HF (5.x) returns after the final norm,
    equals it once the model's own final norm is applied."""
    model, reference = case
    batch = model.prepare(audio, [PROMPT, PROMPT])
    names = [name for name in model.sites() if name.startswith("llm.")]
    captured = capture_sites(model, batch, names)
    with torch.no_grad():
        hidden = reference(model, batch)
    layers = len(names) - 1
    assert len(hidden) == layers + 1
    torch.testing.assert_close(captured["llm.embed"], hidden[0], rtol=0, atol=0)
    for i in range(layers - 1):
        torch.testing.assert_close(captured[f"llm.layers.{i}"], hidden[i + 1], rtol=1e-6, atol=1e-6)
    last = captured[f"llm.layers.{layers - 1}"]
    torch.testing.assert_close(model.final_norm(last), hidden[-1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(last, hidden[-1])


def test_audio_positions_hold_the_projector_output(case, audio) -> None:
    """At the audio positions the LLM's input is the projector's output, row for row."""
    model, _ = case
    batch = model.prepare(audio, [PROMPT, PROMPT])
    captured = capture_sites(model, batch, ["projector", "llm.embed"])
    for row in range(2):
        count = int(batch.audio_mask[row].sum())
        torch.testing.assert_close(captured["llm.embed"][row][batch.audio_mask[row]],
                                   captured["projector"][row, :count], rtol=0, atol=0)


def test_choice_scores_equal_manual_log_softmax_sum(case, audio) -> None:
    """score_choices = Σ log softmax over the choice tokens, recomputed by hand one choice at a time."""
    model, _ = case
    choices = ["positive", "negative", "not sure at all"]
    scores = model.score_choices(audio[0], PROMPT, choices)
    _, continuations = model.scoring_batch(audio[0], PROMPT, choices)
    before, after = model._parts(PROMPT)
    for choice, score, ids in zip(choices, scores, continuations):
        whole = model.tokenizer(after + choice, add_special_tokens=False)["input_ids"]  # chat: no delimiter
        assert whole[-len(ids):] == ids  # the answer's tokens as the text after the audio + answer has them
        batch = model._encode([audio[0]], [(before, after.rstrip())], [ids])
        log_probs = torch.log_softmax(model.logits(batch)[0].double(), dim=-1)
        end = batch.input_ids.shape[1]
        manual = sum(float(log_probs[t - 1, batch.input_ids[0, t]]) for t in range(end - len(ids), end))
        assert score == pytest.approx(manual, abs=1e-5)  # batched (padded) vs single float32 matmuls
    assert len(set(np.round(scores, 6))) == 3


def test_prompt_needs_exactly_one_placeholder(case, audio) -> None:
    model, _ = case
    with pytest.raises(InterpError, match="exactly one <\\|audio\\|>"):
        model.prepare(audio[:1], ["no placeholder here"])


def test_generate_is_greedy_and_deterministic(case, audio) -> None:
    model, _ = case
    assert model.generate(audio[0], PROMPT, max_new_tokens=4) == model.generate(audio[0], PROMPT, max_new_tokens=4)
