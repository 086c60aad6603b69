"""The behavioural harness: a system answers every item of a spoken set; one predictions file per pair.

`run_system` answers the items a previous run has not (interp.behavior.answering), appending each line as it
goes (interp.behavior.files), then finalises the file: every line in set order, forced-choice answers chosen under
the run's calibration (`finalise_choices`), and a sidecar with status "done", the system's config, the prompts,
the rules, counts and provenance. Until the file is finalised, `prediction` is the raw answer and `calibration`
is "none". Calibration (Zhou et al., 2024, interp.task_prompts) needs every item, so it is applied only here; lines
keep their raw scores, so a rerun under another calibration re-finalises a finished file without running the
system again. A resumed file must have been made with the same prompts (and style), rules, kind of system and,
where a system's name does not fix its weights (mini-ultravox's projector), the same weights (else InterpError).

Under an audio ablation (`ablation=`, interp.data.ablation) every item is answered with its audio replaced; the
answers are a run of their own (RUN/<system>+<ablation>/), the sidecar's config records the ablation, its seed and
its rule, and a resume refuses another ablation or, for swap, another derangement (another seed or --limit).
Systems that read text (the oracle, a bare text LLM, an implicit cascade) hear nothing to ablate: they are
refused rather than skipped, so that an ablated run never silently holds clean answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from interp.behavior.answering import (
    ASR_BATCH,
    answer_item,
    check_scoring,
    input_of,
    reads_text,
    transcribe_batch,
)
from interp.behavior.files import (
    PREDICTIONS_SUFFIX,
    SIDECAR_SUFFIX,
    append_prediction,
    read_predictions,
    read_sidecar,
    set_name,
    system_folder,
    write_predictions,
)
from interp.behavior.prediction import Prediction, corpus_wer
from interp.behavior.scoring import (
    CALIBRATION_RULES,
    LENGTH_POLICY,
    OPEN_ANSWER_RULE,
    PARSE_RULE,
)
from interp.behavior.systems import System, SystemSpec
from interp.data.ablation import AblatedAudio, check_ablation
from interp.data.manifest import Item, SpokenSet
from interp.errors import DataError, InterpError
from interp.io import write_json_atomic
from interp.models.base import describe_model
from interp.models.endpoint import EndpointSystem
from interp.models.implicit_cascade import ImplicitCascade
from interp.models.prompting import PlainPrompt
from interp.provenance import provenance
from interp.task_prompts import (
    DEFAULT_PROMPT_STYLE,
    Calibration,
    PromptStyle,
    TaskPrompt,
    check_calibration,
    choose,
    task_prompt,
)

__all__ = ["Progress", "run_system", "finalise_choices", "check_ablated_run"]

Progress = Callable[[int, int], None]
"""progress(done, total): called once at the start of a run and after each item."""


def finalise_choices(predictions: Sequence[Prediction], items: dict[str, Item], *,
                     calibration: Calibration) -> list[Prediction]:
    """The final lines: forced-choice lines with scores get raw_prediction = argmax(scores) and prediction =
    `choose` over the lines of the same task and choices under the run's calibration; others are unchanged."""
    out = list(predictions)
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for index, prediction in enumerate(out):
        if prediction.scores is not None:
            item = items[prediction.id]
            out[index] = replace(prediction, raw_prediction=int(np.argmax(prediction.scores)))
            groups.setdefault((item.task, item.choices), []).append(index)
    for rows in groups.values():
        chosen = choose(np.array([out[row].scores for row in rows]), calibration=calibration)
        for row, choice in zip(rows, chosen):
            out[row] = replace(out[row], prediction=int(choice), calibration=calibration,
                               correct=int(choice) == items[out[row].id].label)
    return out


def _prompt_record(prompt: TaskPrompt) -> dict[str, Any]:
    return {"prompt": str(prompt.prompt), "style": prompt.style, "plain": isinstance(prompt.prompt, PlainPrompt),
            "max_new_tokens": prompt.max_new_tokens}


def _describe_system(system: System, name: str, spec: str | None) -> dict[str, Any]:
    # interp.models.mini loads every architecture's classes: imported only where a run describes a system
    from interp.models.mini import MODEL_CARDS

    described: dict[str, Any] = {"name": name, **describe_model(system, spec), "model": getattr(system, "name", None)}
    card = MODEL_CARDS.get(spec or "")
    if card is not None:
        described["card"] = asdict(card)
    if isinstance(system, EndpointSystem):
        described["endpoint"] = system.config()
    if isinstance(system, ImplicitCascade):
        described.update(system.describe())
    return described


def _run_config(system: System, system_name: str, spec: str | None, prompts: dict[str, TaskPrompt], *,
                prompt_style: PromptStyle, calibration: Calibration,
                ablated: AblatedAudio | None = None) -> dict[str, Any]:
    """The sidecar's `config`: what made the answers, checked again when a run resumes."""
    answers_by = "log-likelihood" if hasattr(getattr(system, "llm", system), "score_choices") else "generate+parse"
    return {
        "system": _describe_system(system, system_name, spec),
        "prompts": {task: _prompt_record(prompt) for task, prompt in prompts.items()},
        "prompt_style": prompt_style,
        "calibration": {"name": calibration, "rule": CALIBRATION_RULES[calibration]},
        "rules": {"forced_choice": answers_by, "length_policy": LENGTH_POLICY,
                  "parse": PARSE_RULE, "open_answers": OPEN_ANSWER_RULE},
        "input": input_of(system),
        "ablation": ablated.config() if ablated else None,
    }


def _check_same_config(previous: dict[str, Any], config: dict[str, Any], sidecar: Path) -> None:
    for key in ("prompts", "rules", "input"):
        if key in previous and previous[key] != json.loads(json.dumps(config[key])):
            raise InterpError(f"{sidecar}: these predictions were made with other {key}; choose another --out or "
                              "delete the folder to start again")
    old_class = previous.get("system", {}).get("class")
    if old_class is not None and old_class != config["system"]["class"]:
        raise InterpError(f"{sidecar}: these predictions were made by a {old_class}, not a "
                          f"{config['system']['class']}; choose another --out")
    if previous.get("ablation") != json.loads(json.dumps(config["ablation"])):
        raise InterpError(f"{sidecar}: these predictions were made under another audio ablation "
                          f"({previous.get('ablation')}); choose another --out")
    old_weights, weights = previous.get("system", {}).get("weights"), config["system"].get("weights")
    if old_weights != weights:
        raise InterpError(f"{sidecar}: these predictions were made with other weights ({old_weights}, now "
                          f"{weights}); choose another --out")


def _counts(predictions: Sequence[Prediction]) -> dict[str, Any]:
    by_task: dict[str, dict[str, int]] = {}
    for prediction in predictions:
        task = by_task.setdefault(prediction.task, {"items": 0, "correct": 0})
        task["items"] += 1
        task["correct"] += bool(prediction.correct)
    counts: dict[str, Any] = {
        "items": len(predictions), "correct": sum(bool(p.correct) for p in predictions),
        "unparsed": sum(1 for p in predictions if p.prediction == -1), "by_task": by_task,
    }
    if any(p.wer is not None for p in predictions):
        counts["wer"] = corpus_wer(predictions)
    return counts


def _finished_lines(path: Path, spoken_set: SpokenSet) -> dict[str, Prediction]:
    """The lines an earlier run finished, by item id (a torn last line is cut off the file)."""
    ids = {item.id for item in spoken_set.items}
    done: dict[str, Prediction] = {}
    for prediction in read_predictions(path, repair=True):
        if prediction.id not in ids:
            raise DataError(f"{path} holds item {prediction.id!r}, which {spoken_set.root} does not have: the set "
                            "changed since; choose another --out")
        done[prediction.id] = prediction
    return done


def check_ablated_run(ablation: str | None, specs: Sequence[SystemSpec], sets: Sequence[SpokenSet], *,
                      limit: int | None = None) -> None:
    """Refuse, before any system loads or anything is written, an unknown ablation, a known text-reading system
    under one (run_system refuses the others once loaded) and a swap over fewer than 2 items. InterpError."""
    if ablation is None:
        return
    check_ablation(ablation)
    from interp.models.mini import MODEL_CARDS  # every architecture's classes: only where an ablation is asked

    for spec in specs:
        card = MODEL_CARDS.get(spec.spec)
        if card is not None and card.kind == "text-lm":
            raise InterpError(f"--ablate {ablation}: {spec.name} reads the transcript, not the audio; leave it out "
                              "of an ablated run")
    for spoken in sets:
        n = min(limit or len(spoken), len(spoken))
        if ablation == "swap" and n < 2:
            raise InterpError(f"--ablate swap needs at least 2 items to give each one another item's audio; "
                              f"{spoken.root} has {n} in this run")


def _ablation_for(system: System, system_name: str, spoken_set: SpokenSet, items: Sequence[Item],
                  ablation: str | None, seed: int) -> AblatedAudio | None:
    """The ablated audio of a run (None without one); InterpError for a system that reads text."""
    if ablation is None:
        return None
    if reads_text(system):
        raise InterpError(f"--ablate {ablation}: {system_name} reads {input_of(system)}, not the audio; leave it "
                          "out of an ablated run")
    return AblatedAudio.build(spoken_set, ablation, items, seed=seed)


def _check_same_sources(done: dict[str, Prediction], ablated: AblatedAudio | None, path: Path) -> None:
    """A resumed swap run must have heard what the current derangement gives (same seed, same items)."""
    if ablated is None or ablated.name != "swap":
        return
    for item in ablated.items:
        line = done.get(item.id)
        if line is not None and line.audio_from != ablated.heard_from(item):
            raise InterpError(f"{path}: {item.id} heard {line.audio_from}'s audio, not {ablated.heard_from(item)}'s: "
                              "these predictions were swapped over other items (another --limit) or another seed; "
                              "choose another --out")


def _answer_pending(system: System, spoken_set: SpokenSet, items: Sequence[Item], path: Path,
                    prompts: dict[str, TaskPrompt], done: dict[str, Prediction], progress: Progress | None,
                    ablated: AblatedAudio | None = None) -> None:
    """Answer the items not in `done`, appending each line to `path` (and to `done`) as soon as it is made."""
    pending = [item for item in items if item.id not in done]
    total, finished = len(items), len(items) - len(pending)
    if progress:
        progress(finished, total)
    audio = ablated.audio if ablated else None
    with path.open("a", encoding="utf-8") as out:
        for start in range(0, len(pending), ASR_BATCH):
            chunk = pending[start:start + ASR_BATCH]
            heard = transcribe_batch(system, spoken_set, chunk, audio=audio)
            for item in chunk:
                prediction = answer_item(system, spoken_set, item, prompts[item.task], heard=heard.get(item.id),
                                         audio=audio)
                if ablated:
                    prediction = replace(prediction, audio_from=ablated.heard_from(item))
                append_prediction(out, prediction)
                done[item.id] = prediction
                finished += 1
                if progress:
                    progress(finished, total)


def run_system(system: System, spoken_set: SpokenSet, out_dir: Path, *, system_name: str, limit: int | None = None,
               progress: Progress | None = None, spec: str | None = None, seed: int = 0,
               prompt_style: PromptStyle = DEFAULT_PROMPT_STYLE, calibration: Calibration = "none",
               ablation: str | None = None) -> Path:
    """Answer the set's items (the first `limit` of them) with `system`; returns the predictions file.

    The final file holds, in set order, every item answered so far: a rerun with a smaller limit keeps the
    lines an earlier, larger run wrote, and calibration uses all of them.

    prompt_style: how tasks are put (interp.task_prompts: "chat" through each model's template, or "few-shot").
    calibration: "none" (the default: each answer depends on its item alone) or "batch" (see module docstring).
    Resumable (finished lines are kept, only missing items are answered) and finalised atomically under the
    calibration asked for. progress(done, total) is called once at the start and after each item.
    ablation: None (each item's own audio) or "silence", "babble", "swap" (interp.data.ablation): the answers go
    to RUN/<system>+<ablation>/ (see module docstring).
    seed: the ablation's seed (babble offsets, swap derangement); otherwise recorded only: greedy decoding and
    log-likelihood scoring draw no random numbers.
    Raises InterpError for a task without a prompt, for a file made with other prompts, another system or another
    ablation, for a system that reads text under an ablation, or for a swap of fewer than 2 items.
    """
    if limit is not None and limit < 1:
        raise InterpError(f"--limit must be at least 1, got {limit}")
    items = spoken_set.items[:limit] if limit else spoken_set.items
    check_calibration(calibration)
    prompts = {task: task_prompt(task, prompt_style) for task in dict.fromkeys(item.task for item in spoken_set.items)}
    name = set_name(spoken_set.root)
    ablated = _ablation_for(system, system_name, spoken_set, items, ablation, seed)
    folder = Path(out_dir) / system_folder(system_name, ablation)
    path, sidecar = folder / f"{name}{PREDICTIONS_SUFFIX}", folder / f"{name}{SIDECAR_SUFFIX}"
    config = _run_config(system, system_name, spec, prompts, prompt_style=prompt_style, calibration=calibration,
                         ablated=ablated)
    check_scoring(system, spoken_set, prompt_style=prompt_style)
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_sidecar(sidecar)
    if previous is not None:
        _check_same_config(previous.get("config", {}), config, sidecar)
    done = _finished_lines(path, spoken_set)
    _check_same_sources(done, ablated, path)
    set_info = {"name": name, "path": str(spoken_set.root), "items": len(spoken_set)}
    write_json_atomic(sidecar, {"status": "running", "config": config, "set": set_info, "limit": limit, "seed": seed})

    _answer_pending(system, spoken_set, items, path, prompts, done, progress, ablated)
    by_id = {item.id: item for item in spoken_set.items}
    final = finalise_choices([done[item.id] for item in spoken_set.items if item.id in done], by_id,
                             calibration=calibration)
    write_predictions(path, final)
    counts = _counts(final)
    write_json_atomic(sidecar, {
        "status": "done", "config": config, "set": set_info, "limit": limit, "seed": seed, "counts": counts,
        "accuracy": counts["correct"] / counts["items"] if counts["items"] else None,
        "provenance": provenance(command="interp behave", config={"system": spec or system_name, "set": str(
            spoken_set.root), "limit": limit, "ablation": ablation}, seed=seed),
    })
    return path
