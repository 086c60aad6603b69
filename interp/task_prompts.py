"""How each task is put to a system: one prompt per task and style, the same for end-to-end models and cascades.

Two styles, chosen per run and recorded in every predictions file:
- `chat` (the default): a zero-shot instruction with the audio slot, which each system renders through its own
  model's chat template (the one it was trained with), BOS as its tokenizer adds it. The answer is the assistant's
  first words; the matched cascade's LLM reads the same instruction with the transcript in the slot.
- `few-shot`: few-shot completion prompts written here (never benchmark items), given without any template
  (`PlainPrompt`), ending in `Answer:`; for base models and the mini stack, whose 135 M LLM reads them better.

Forced-choice answers are the argmax of the choices' log-likelihoods (interp.models.prompting scores each as the
continuation the model would write). Batch calibration (Zhou et al., 2024, "Batch Calibration": subtract each
choice's mean score over the run's items) is an explicit option of a run, never the default: it makes each answer
depend on the other items of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from interp.data.manifest import Item
from interp.errors import InterpError
from interp.models.prompting import PlainPrompt

__all__ = ["PromptStyle", "PROMPT_STYLES", "DEFAULT_PROMPT_STYLE", "Calibration", "CALIBRATIONS", "TaskPrompt",
           "TASKS", "task_prompt", "check_prompt_style", "check_calibration", "choose"]

PromptStyle = Literal["chat", "few-shot"]
PROMPT_STYLES: tuple[str, ...] = get_args(PromptStyle)
DEFAULT_PROMPT_STYLE: PromptStyle = "chat"
Calibration = Literal["none", "batch"]
CALIBRATIONS: tuple[str, ...] = get_args(Calibration)


@dataclass(frozen=True)
class TaskPrompt:
    """A task's prompt in one style: one AUDIO_PLACEHOLDER (a PlainPrompt for `few-shot`).

    `{options}` in the prompt is replaced by the item's choices, one per line, for tasks whose choices differ
    by item.
    """

    prompt: str
    style: PromptStyle
    max_new_tokens: int = 16

    def for_item(self, item: Item) -> str:
        """The prompt for one item (a PlainPrompt stays one)."""
        if "{options}" not in self.prompt:
            return self.prompt
        text = self.prompt.replace("{options}", "\n".join(item.choices))
        return PlainPrompt(text) if isinstance(self.prompt, PlainPrompt) else text


@dataclass(frozen=True)
class _Task:
    """The two renderings of one task: the zero-shot instruction and the few-shot completion."""

    instruction: str
    few_shot: PlainPrompt
    max_new_tokens: int = 16


def _few_shot(label: str, shots: list[tuple[str, str]], *, ask: str = "") -> PlainPrompt:
    """`label: text` [ask] `Answer: answer` blocks, then the audio in the same frame, ending in `Answer:`."""
    ask = f"{ask}\n" if ask else ""
    blocks = [f"{label}: {text}\n{ask}Answer: {answer}\n\n" for text, answer in shots]
    return PlainPrompt("".join(blocks) + f"{label}: <|audio|>\n{ask}Answer:")


_REVIEW_SHOTS = [("The pasta was cold and the waiter was rude.", "negative"),
                 ("A warm, funny and beautifully acted story.", "positive")]
_NEWS_SHOTS = [("The striker scored a late goal to win the cup.", "Sports"),
               ("Stocks fell after the company cut its profit forecast.", "Business"),
               ("Rebels and the government agreed to a ceasefire after weeks of fighting.", "World"),
               ("A new chip from the lab doubles battery life in phones.", "Sci/Tech")]
_YESNO_SHOTS = [("Is a cat a kind of animal?", "yes"), ("Is a spoon a kind of vehicle?", "no")]
_TRIVIA_SHOTS = [("What is the capital of France?", "Paris"), ("How many legs does a spider have?", "eight")]

_SENTIMENT = _Task("<|audio|>\nIs the sentiment of this review positive or negative? Answer with one word.",
                   _few_shot("Review", _REVIEW_SHOTS))
_TOPIC = _Task("<|audio|>\nIs this news about World, Sports, Business or Sci/Tech? Answer with one of these words.",
               _few_shot("News", _NEWS_SHOTS))
_TRANSCRIBE = "Repeat exactly what you heard: <|audio|>"

TASKS: dict[str, _Task] = {
    "sentiment": _SENTIMENT,
    "sst2": _SENTIMENT,
    "topic": _TOPIC,
    "ag_news": _TOPIC,
    "yesno": _Task("<|audio|>\nAnswer the question with yes or no.", _few_shot("Question", _YESNO_SHOTS)),
    "pitch": _Task("<|audio|>\nIs the speaker's voice low or high? Answer with one word.",
                   PlainPrompt("Speech: <|audio|>\nIs the speaker's voice low or high?\nAnswer:")),
    "rate": _Task("<|audio|>\nIs the speaker talking slow or fast? Answer with one word.",
                  PlainPrompt("Speech: <|audio|>\nIs the speaker talking slow or fast?\nAnswer:")),
    "meld": _Task("<|audio|>\nWhich emotion does the speaker express: anger, disgust, fear, joy, neutral, sadness "
                  "or surprise? Answer with one word.",
                  PlainPrompt("Utterance: <|audio|>\nEmotion (anger, disgust, fear, joy, neutral, sadness or "
                              "surprise):")),
    "mustard": _Task("<|audio|>\nIs this utterance sarcastic or not sarcastic? Answer with one of the two.",
                     PlainPrompt("Utterance: <|audio|>\nIs this sarcastic or not sarcastic?\nAnswer:")),
    "csqa": _Task("<|audio|>\nChoose the best answer:\n{options}\nAnswer with the answer's text.",
                  PlainPrompt("Question: <|audio|>\nOptions:\n{options}\nAnswer:")),
    "triviaqa": _Task("<|audio|>\nAnswer the question in a few words.", _few_shot("Question", _TRIVIA_SHOTS)),
    # the instruction mini-ultravox's projector was trained on, in both styles
    "transcribe": _Task(_TRANSCRIBE, PlainPrompt(_TRANSCRIBE), max_new_tokens=96),
}


def check_prompt_style(style: str) -> PromptStyle:
    """The style, or InterpError naming the known ones."""
    if style not in PROMPT_STYLES:
        raise InterpError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return style  # type: ignore[return-value]


def check_calibration(calibration: str) -> Calibration:
    """The calibration, or InterpError naming the known ones."""
    if calibration not in CALIBRATIONS:
        raise InterpError(f"unknown calibration {calibration!r}; choose one of {', '.join(CALIBRATIONS)}")
    return calibration  # type: ignore[return-value]


def task_prompt(task: str, style: PromptStyle = DEFAULT_PROMPT_STYLE) -> TaskPrompt:
    """The prompt of a task in a style; raises InterpError listing the known tasks or styles."""
    if task not in TASKS:
        raise InterpError(f"no prompt for task {task!r}; known tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    text = spec.instruction if check_prompt_style(style) == "chat" else spec.few_shot
    return TaskPrompt(text, style, spec.max_new_tokens)


def choose(scores: np.ndarray, *, calibration: Calibration) -> np.ndarray:
    """(items,) chosen indices from (items, choices) float64 log-likelihoods: the argmax, after subtracting each
    choice's mean over the items when calibration is "batch"."""
    scores = np.asarray(scores, dtype=np.float64)
    if check_calibration(calibration) == "batch":
        scores = scores - scores.mean(axis=0, keepdims=True)
    return scores.argmax(axis=1)
