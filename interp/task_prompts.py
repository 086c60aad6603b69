"""How each task is put to a system: one prompt per task, the same for end-to-end models and cascades.

SmolLM2-135M-Instruct is at chance on SST-2 with a zero-shot chat question and raw log-likelihoods (it
always says "positive"). Two changes make the tasks doable at this size (measured figures in README):
- few-shot completion prompts written here (never benchmark items), given without the chat template
  (`PlainPrompt`);
- batch calibration (Zhou et al., 2024, "Batch Calibration"): a forced-choice answer is the argmax of
  each choice's log-likelihood minus that choice's mean over the items of the run, which removes the
  model's prior for one answer word. It needs every item of a run to share the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interp.data.manifest import Item
from interp.errors import InterpError
from interp.models.prompting import PlainPrompt

__all__ = ["TaskPrompt", "TASK_PROMPTS", "task_prompt", "calibrated_choice"]


@dataclass(frozen=True)
class TaskPrompt:
    """A task's prompt (one AUDIO_PLACEHOLDER) and how its answers are chosen.

    calibrated: forced-choice answers use batch calibration (see module docstring). `{options}` in the
    prompt is replaced by the item's choices, one per line, for tasks whose choices differ by item.
    """

    prompt: str
    calibrated: bool = True
    max_new_tokens: int = 16

    def for_item(self, item: Item) -> str:
        """The prompt for one item (a PlainPrompt stays one)."""
        if "{options}" not in self.prompt:
            return self.prompt
        text = self.prompt.replace("{options}", "\n".join(item.choices))
        return PlainPrompt(text) if isinstance(self.prompt, PlainPrompt) else text


def _few_shot(label: str, question: str | None, shots: list[tuple[str, str]]) -> PlainPrompt:
    """`label: text` [question] `Answer: answer` blocks, then the audio in the same frame."""
    ask = f"{question}\n" if question else ""
    blocks = [f"{label}: {text}\n{ask}Answer: {answer}\n\n" for text, answer in shots]
    return PlainPrompt("".join(blocks) + f"{label}: <|audio|>\n{ask}Answer: ")


_REVIEW_SHOTS = [("The pasta was cold and the waiter was rude.", "negative"),
                 ("A warm, funny and beautifully acted story.", "positive")]
_NEWS_SHOTS = [("The striker scored a late goal to win the cup.", "Sports"),
               ("Stocks fell after the company cut its profit forecast.", "Business"),
               ("Rebels and the government agreed to a ceasefire after weeks of fighting.", "World"),
               ("A new chip from the lab doubles battery life in phones.", "Sci/Tech")]
_YESNO_SHOTS = [("Is a cat a kind of animal?", "yes"), ("Is a spoon a kind of vehicle?", "no")]
_TRIVIA_SHOTS = [("What is the capital of France?", "Paris"), ("How many legs does a spider have?", "eight")]

TASK_PROMPTS: dict[str, TaskPrompt] = {
    "sentiment": TaskPrompt(_few_shot("Review", None, _REVIEW_SHOTS)),
    "sst2": TaskPrompt(_few_shot("Review", None, _REVIEW_SHOTS)),
    "topic": TaskPrompt(_few_shot("News", None, _NEWS_SHOTS)),
    "ag_news": TaskPrompt(_few_shot("News", None, _NEWS_SHOTS)),
    "yesno": TaskPrompt(_few_shot("Question", None, _YESNO_SHOTS)),
    "pitch": TaskPrompt(PlainPrompt("Speech: <|audio|>\nIs the speaker's voice low or high?\nAnswer: ")),
    "rate": TaskPrompt(PlainPrompt("Speech: <|audio|>\nIs the speaker talking slow or fast?\nAnswer: ")),
    "meld": TaskPrompt(PlainPrompt("Utterance: <|audio|>\nEmotion (anger, disgust, fear, joy, neutral, sadness "
                                   "or surprise): ")),
    "mustard": TaskPrompt(PlainPrompt("Utterance: <|audio|>\nIs this sarcastic or not sarcastic?\nAnswer: ")),
    "csqa": TaskPrompt(PlainPrompt("Question: <|audio|>\nOptions:\n{options}\nAnswer: "), calibrated=False),
    "triviaqa": TaskPrompt(_few_shot("Question", None, _TRIVIA_SHOTS), calibrated=False),
    "transcribe": TaskPrompt("Repeat exactly what you heard: <|audio|>", calibrated=False, max_new_tokens=96),
}


def task_prompt(task: str) -> TaskPrompt:
    """The prompt of a task; raises InterpError listing the known tasks."""
    if task not in TASK_PROMPTS:
        raise InterpError(f"no prompt for task {task!r}; known tasks: {', '.join(TASK_PROMPTS)}")
    return TASK_PROMPTS[task]


def calibrated_choice(scores: np.ndarray, *, calibrated: bool) -> np.ndarray:
    """(items,) chosen indices from (items, choices) log-likelihoods; batch-calibrated when asked."""
    scores = np.asarray(scores, dtype=np.float64)
    if calibrated:
        scores = scores - scores.mean(axis=0, keepdims=True)
    return scores.argmax(axis=1)
