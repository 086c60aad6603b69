"""Answer a spoken set with an eraser in force: the behaviour harness (interp.behavior) under apply_eraser.

It sits above both: the eraser is interp.erasure's (layer 2), the harness interp.behavior's (layer 3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interp.behavior import Progress, run_system, set_name
from interp.data.manifest import SpokenSet
from interp.erasure import Eraser, Positions, apply_eraser
from interp.errors import InterpError
from interp.io import write_json_atomic
from interp.models.base import SpeechLM
from interp.sites import expand_sites
from interp.task_prompts import DEFAULT_PROMPT_STYLE, PromptStyle

__all__ = ["evaluate_erasure"]

_SAME = ("eraser_digest", "positions", "sites")
"""What a rerun into the same folder must share with the predictions already there."""


def _check_previous(sidecar: Path, record: dict[str, Any]) -> None:
    """Refuse a rerun whose eraser, positions or sites differ from those the folder's predictions were made with."""
    if not sidecar.is_file():
        return
    try:
        previous = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InterpError(f"{sidecar}: not valid JSON ({error.msg}); delete the folder to start again") from None
    for key in _SAME:
        if previous.get(key) != record[key]:
            raise InterpError(f"{sidecar}: these predictions were made with another {key.replace('_', ' ')}; "
                              "choose another --out or system name")


def evaluate_erasure(model: SpeechLM, eraser: Eraser, spoken_set: SpokenSet, out_dir: str | Path, *,
                     system_name: str | None = None, positions: Positions = "audio",
                     sites: Sequence[str] | str | None = None, limit: int | None = None,
                     progress: Progress | None = None, prompt_style: PromptStyle = DEFAULT_PROMPT_STYLE) -> Path:
    """Run the behavioural harness (`interp.behavior.run_system`) on `model` with `eraser` applied; returns the
    predictions file `<out_dir>/<system_name>/<set>.jsonl`. system_name defaults to ``<model>+erase-<concept>``.

    `<set>.erasure.json` beside the predictions records the eraser (digest, concept, ranks, file metadata), sites
    and positions; a rerun of the same set into the same folder with another eraser or other settings is refused
    (InterpError), since the harness resumes the items already answered. Other sets may use other erasers (a
    sweep fits one per set).
    """
    name = system_name or f"{getattr(model, 'name', 'model')}+erase-{eraser.concept}"
    chosen = expand_sites(sites, list(eraser.sites)) if isinstance(sites, str) else list(sites or eraser.sites)
    record = {"eraser_digest": eraser.digest(), "concept": eraser.concept, "positions": positions, "sites": chosen,
              "model": getattr(model, "name", None), "ranks": eraser.summary(), "eraser": eraser.meta}
    folder = Path(out_dir) / name
    sidecar = folder / f"{set_name(spoken_set.root)}.erasure.json"
    _check_previous(sidecar, record)
    with apply_eraser(model, eraser, sites=chosen, positions=positions):  # refuses a wrong model before writing
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sidecar, json.loads(json.dumps(record, allow_nan=False, default=str)), indent=1)
        return run_system(model, spoken_set, Path(out_dir), system_name=name, limit=limit, progress=progress,
                          prompt_style=prompt_style)
