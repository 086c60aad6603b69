"""Forced-choice scoring as lm-evaluation-harness splits it: the scored tokens are those the model would write."""

from __future__ import annotations

import pytest

from interp.models.prompting import (
    PlainPrompt,
    ScoringError,
    choice_delimiter,
    continuation_ids,
    encode_context,
)
from interp.models.tiny import (
    tiny_llama3_tokenizer,
    tiny_phi4mm_tokenizer,
    tiny_qwen2_audio_tokenizer,
    tiny_tokenizer,
)

CONTEXTS = {  # (context, delimiter): a plain few-shot ending, a chat turn's opening, a context ending in a space
    "plain": ("Review: the movie was wonderful\nAnswer:", " "),
    "chat": ("<|im_start|>user\nthe movie was wonderful<|im_end|>\n<|im_start|>assistant\n", ""),
    "trailing space": ("Review: the movie was wonderful\nAnswer: ", " "),
}
CHOICES = ["positive", "negative", "Sci/Tech", "not sure at all"]

TINY = {"tiny (ChatML)": tiny_tokenizer, "tiny-llama3": tiny_llama3_tokenizer,
        "tiny-qwen2-audio": tiny_qwen2_audio_tokenizer,
        "tiny-phi4mm": tiny_phi4mm_tokenizer}


def _check_whole_answer(tokenizer, context: str, delimiter: str) -> None:
    """context ids + continuation ids == the tokens of the whole answer text, for every choice."""
    head, continuations = continuation_ids(tokenizer, context, CHOICES, delimiter=delimiter)
    for choice, ids in zip(CHOICES, continuations):
        written = context.rstrip() + (context[len(context.rstrip()):] or delimiter) + choice
        assert head + ids == tokenizer(written, add_special_tokens=False)["input_ids"]
        assert ids  # something is scored


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("case", list(CONTEXTS))
def test_scored_tokens_are_the_whole_answers_tokens_tiny(name, case) -> None:
    """For every tiny tokenizer, the context's tokens followed by a choice's are the whole answer's."""
    _check_whole_answer(TINY[name](), *CONTEXTS[case])


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def real_tokenizer(request):
    from interp.models.gguf_llm import load_gguf_llm

    return load_gguf_llm(request.param).tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CONTEXTS))
def test_scored_tokens_are_the_whole_answers_tokens_real(real_tokenizer, case) -> None:
    """SmolLM2's and Gemma-3's real tokenizers: the scored tokens equal the tokenisation of the whole answer."""
    _check_whole_answer(real_tokenizer, *CONTEXTS[case])


@pytest.mark.slow
def test_answer_after_a_trailing_space_is_scored_as_written() -> None:
    """'Answer: ' + 'positive': SmolLM2 writes `Answer`, `:`, ` positive`. The old split scored `positive` after
    a lone ` ` token, a sequence the model never produces; the continuation split scores ` positive`."""
    from interp.models.gguf_llm import load_gguf_llm

    tokenizer = load_gguf_llm("smollm2-135m-instruct").tokenizer
    context = "Review: the pasta was cold.\nAnswer: "
    old_head = tokenizer(context, add_special_tokens=False)["input_ids"]
    old_choice = tokenizer("positive", add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + "positive", add_special_tokens=False)["input_ids"]
    assert old_head + old_choice != whole  # the old split is not the model's own tokenisation
    head, (ids,) = continuation_ids(tokenizer, context, ["positive"], delimiter=" ")
    assert head + ids == whole
    assert tokenizer.convert_ids_to_tokens(ids) == ["Ġpositive"]


def test_choice_that_tokenises_to_nothing_is_refused() -> None:
    with pytest.raises(ScoringError, match="choice is empty"):
        continuation_ids(tiny_tokenizer(), "Answer:", ["positive", " "], delimiter=" ")


def test_context_that_merges_with_the_answer_is_refused() -> None:
    """A context whose last token would merge with the answer cannot be split where the model splits it."""
    tokenizer = tiny_tokenizer()
    head = tokenizer("the mo", add_special_tokens=False)["input_ids"]
    assert tokenizer("the movie", add_special_tokens=False)["input_ids"][:len(head)] != head  # 'mo'+'vie' merge
    with pytest.raises(ScoringError, match="does not tokenise as a prefix"):
        continuation_ids(tokenizer, "the mo", ["vie"], delimiter="")


def test_delimiter_follows_the_prompt_kind() -> None:
    """A plain prompt's answer follows a space ('Answer:' + ' positive'); a chat turn's answer opens it."""
    assert choice_delimiter(PlainPrompt("Review: <|audio|>\nAnswer:")) == " "
    assert choice_delimiter("<|audio|>\nIs it positive?") == ""


def test_bos_exactly_once() -> None:
    """One BOS where the tokenizer adds one, also when a template writes it; none where it adds none."""
    llama = tiny_llama3_tokenizer()
    bos = llama.bos_token_id
    assert encode_context(llama, "hello").count(bos) == 1
    assert encode_context(llama, "<|begin_of_text|>hello").count(bos) == 1
    chatml = tiny_tokenizer()
    assert chatml.bos_token_id not in encode_context(chatml, "hello")
