"""The text LLM of cascades and the oracle: same prompt filling, sites and scoring rule as the speech models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.models.cascade import Oracle
from interp.models.prompting import PlainPrompt
from interp.models.tiny import tiny_text_lm

PROMPT = "What is the sentiment? <|audio|> Answer with one word."


@pytest.fixture(scope="module")
def llm():
    return tiny_text_lm(seed=0)


def test_text_fills_the_placeholder_inside_the_chat_template(llm) -> None:
    text = llm.tokenizer.decode(llm.prompt_ids("the movie was wonderful", PROMPT))
    assert text == ("<|im_start|>user\nWhat is the sentiment? the movie was wonderful Answer with one word.<|im_end|>\n"
                    "<|im_start|>assistant\n")


@pytest.mark.parametrize("choices", [["positive", "negative"], ["Sci/Tech", "World", "not sure at all"]])
def test_choice_scores_equal_manual_log_softmax_sum(llm, choices) -> None:
    """One forward per choice over the whole answer text by hand vs the prompt's KV cache shared by choices
    of unequal token lengths: the scored tokens are the whole text's after the prompt's."""
    scores = llm.score_choices("i loved it", PROMPT, choices)
    context = llm.render(PROMPT, "i loved it").rstrip()  # the chat template's trailing newline joins the answer
    head = llm.tokenizer(context, add_special_tokens=False)["input_ids"]
    for choice, score in zip(choices, scores):
        ids = llm.tokenizer(context + "\n" + choice, add_special_tokens=False)["input_ids"]
        assert ids[:len(head)] == head
        with torch.no_grad():
            log_probs = torch.log_softmax(llm.model(torch.tensor([ids])).logits[0].double(), dim=-1)
        manual = sum(float(log_probs[t - 1, ids[t]]) for t in range(len(head), len(ids)))
        assert score == pytest.approx(manual, abs=1e-5)
    assert len(set(np.round(scores, 6))) == len(choices)


def test_plain_prompt_skips_the_chat_template(llm) -> None:
    prompt = PlainPrompt("Review: great fun.\nAnswer: positive\n\nReview: <|audio|>\nAnswer:")
    assert llm.tokenizer.decode(llm.prompt_ids("dull", prompt)) == (
        "Review: great fun.\nAnswer: positive\n\nReview: dull\nAnswer:")


def test_layer_sites_equal_output_hidden_states(llm) -> None:
    """llm.layers.i = hidden_states[i+1]; the last equals HF's post-norm state after final_norm."""
    ids = torch.tensor([llm.prompt_ids("i loved it", PROMPT)])
    captured, handles = {}, []
    for name, site in llm.sites().items():
        if site.take == "output":
            handles.append(site.module.register_forward_hook(
                lambda module, args, output, name=name: captured.__setitem__(name, output)))
    with torch.no_grad():
        hidden = llm.model(ids, output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    layers = len(llm.model.model.layers)
    for i in range(layers - 1):
        torch.testing.assert_close(captured[f"llm.layers.{i}"], hidden[i + 1], rtol=0, atol=0)
    torch.testing.assert_close(llm.final_norm(captured[f"llm.layers.{layers - 1}"]), hidden[-1])


def test_oracle_reads_the_gold_transcript(llm) -> None:
    oracle = Oracle(llm)
    assert (oracle.score_choices("i loved it", PROMPT, ["yes", "no"])
            == llm.score_choices("i loved it", PROMPT, ["yes", "no"])).all()
    assert (oracle.generate("i loved it", PROMPT, max_new_tokens=3)
            == llm.generate("i loved it", PROMPT, max_new_tokens=3))


def test_prompt_without_placeholder_is_refused(llm) -> None:
    with pytest.raises(InterpError, match="exactly one"):
        llm.score_choices("x", "no placeholder", ["a"])
