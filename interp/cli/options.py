"""What the commands share: the options every model-loading command takes, loading the model they name, and the
progress bars (on stderr, drawn on a terminal only, so that logs and tests stay clean)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from tqdm import tqdm

    from interp.behavior import System

__all__ = ["DEVICE", "DTYPE", "PROMPTS", "DEVICE_MAP", "MODEL_HELP", "SYSTEMS_HELP", "load_system", "progress", "bar"]

DEVICE = typer.Option("cpu", help="Torch device: cpu, cuda, cuda:1.")
DTYPE = typer.Option("float32", help="Weights' precision for checkpoints: float32, bfloat16, float16.")
PROMPTS = typer.Option("chat", "--prompts", metavar="STYLE",
                       help="How tasks are put: chat (each task's zero-shot instruction through each model's own "
                            "chat template) or few-shot (plain few-shot completions, for base models and the mini "
                            "stack). Keep it the same across extract, behave, lens and erase of one study.")
DEVICE_MAP = typer.Option(None, "--device-map", help="'auto' spreads a large checkpoint over all GPUs.")
MODEL_HELP = ("A model name (interp models list) or a local checkpoint: qwen2-audio:PATH, "
              "ultravox:PATH[,audio=PATH][,llm=PATH], phi4mm:PATH[,speech_lora=off], cascade:asr=PATH,llm=PATH "
              "(llm=self,speech=SPEC last: the speech LLM's own LLM).")
SYSTEMS_HELP = ("Comma-separated systems: model names (interp models list), checkpoint specs (" + MODEL_HELP.split(
    "checkpoint: ")[-1].rstrip(".") + ") or endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1]; "
    "end any of them with ,name=NAME to choose its folder name.")


def load_system(model: str, device: str, dtype: str, device_map: str | None) -> System:
    """The model `--model` names, on `--device` in `--dtype`."""
    from interp.models.checkpoints import LoadOptions
    from interp.models.mini import load_model

    return load_model(model, options=LoadOptions(device=device, dtype=dtype, device_map=device_map))


def progress(units: Iterable | None, *, total: int | None, desc: str) -> tqdm:
    """A progress bar on stderr over `units` (or updated by hand when None), shown on a terminal only."""
    from tqdm import tqdm

    return tqdm(units, total=total, desc=desc, unit="item", disable=None, file=sys.stderr)


@contextlib.contextmanager
def bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar as the library's Progress takes it (interp.study.progress): yields update(n)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="item", disable=None, file=sys.stderr, leave=False) as shown:
        yield shown.update
