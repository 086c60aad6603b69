"""The behavioural harness: every system answers every item of a spoken set; one predictions file per pair.

How an item is answered
-----------------------
* Forced choice (items with choices), systems with `score_choices`: the score of a choice is the SUM of its
  tokens' log-probabilities as a continuation of the task prompt, split as lm-evaluation-harness splits it
  (interp.models.prompting: no length normalisation). The answer is the argmax. Only when the run asks for it
  (`calibration="batch"`, interp.task_prompts) is the final answer batch-calibrated (Zhou et al., 2024): argmax
  over choices of score - that choice's mean score over the items of the same task (and the same choices) in the
  file. Calibration needs every item, so it is applied when the file is finalised; `raw_prediction` keeps the
  uncalibrated argmax, and every line and the sidecar say which calibration made `prediction`.
* Forced choice, systems without scores (`EndpointSystem`): greedy generation, then `parse_choice`: the choice
  the reply starts with, else the choice that occurs first in it (whole words, after `normalize_transcript`;
  the longer choice wins a tie, so "not sarcastic" beats "sarcastic"). An unparseable reply is prediction -1
  and counts as wrong. No calibration (there are no scores).
* Open tasks (no choices): greedy generation. `triviaqa`-style answers are the reply's first non-empty line;
  correct when, after `normalize_answer` (lower case, no punctuation, no articles a/an/the, single spaces),
  it equals one of the item's accepted answers or contains one as a whole-word sequence. `transcribe` items
  are scored by word error rate (interp.text_metrics); correct means a normalised exact match.
* The oracle (and any bare text LLM) reads the item's gold transcript instead of its audio; a cascade's
  ASR transcript is recorded beside its answer.

Files (`<out>/<system>/<set>.jsonl` + `<set>.json`)
--------------------------------------------------
One JSON line per item, appended (and flushed) as soon as the item is answered, so a killed run loses at most
the item in progress; a rerun keeps the finished lines (a torn last line is dropped) and answers only the rest.
When every item of the run is answered, the file is rewritten atomically (temporary file + os.replace) in set
order with the calibrated predictions, and the sidecar `<set>.json` gets status "done" with the system's
config, the prompts, the rules, counts and provenance. Fields of a line: id, task, parent_id (clean item of a
noisy one), snr_db (None when clean), label (gold index, or accepted answers), n_choices, scores (one per choice,
or None), raw_prediction, prediction (index, -1 unparseable; the answer text for open tasks), calibration,
correct, latency_s, and where they apply reply (generated text), asr_transcript (cascades), wer and ref_words
(transcribe). Until the file is finalised, `prediction` is the raw answer and `calibration` is "none". A set is
named after its folder; the per-SNR folders of `interp data noise` (`snr10`) get their parent's name in front.
A resumed file must have been made with the same prompts (and style), rules, kind of system and, where a system's name
does not fix its weights (mini-ultravox's projector), the same weights (else InterpError).

`run_statistics` turns a run folder into the stats.json of `interp stats` (interp.stats does the numbers).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interp.data.manifest import Item, SpokenSet
from interp.errors import DataError, InterpError
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
from interp.text_metrics import normalize_transcript, word_error_rate

__all__ = [
    "PREDICTIONS_SUFFIX", "SIDECAR_SUFFIX", "LENGTH_POLICY", "CALIBRATION_RULES", "PARSE_RULE", "OPEN_ANSWER_RULE",
    "SystemSpec", "parse_systems", "set_name", "parse_choice", "normalize_answer", "match_answer",
    "answer_item", "check_scoring", "finalise_choices", "run_system", "read_predictions", "read_sidecar", "run_summary",
    "EndpointSystem", "run_statistics", "base_id", "record_run",
]

_log = logging.getLogger(__name__)

PREDICTIONS_SUFFIX = ".jsonl"
SIDECAR_SUFFIX = ".json"
LENGTH_POLICY = "sum of the choice's token log-probabilities after the prompt, no length normalisation"
CALIBRATION_RULES = {
    "none": "argmax over choices of the score (no calibration)",
    "batch": "batch calibration: argmax over choices of (score - the choice's mean score over the file's items of the "
             "same task and choices)",
}
PARSE_RULE = ("generation + parsing: the choice the normalised reply starts with, else the choice occurring first "
              "in it (whole words; longer choice wins ties); none -> -1 (wrong)")
OPEN_ANSWER_RULE = ("first non-empty line of the reply; correct when, normalised (lower case, no punctuation, no "
                    "articles), it equals or contains (whole words) an accepted answer; transcribe: WER, "
                    "correct = normalised exact match")
_ARTICLES = frozenset({"a", "an", "the"})
_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_SNR_SUFFIX = re.compile(r"\.snr-?[0-9.]+$")
_NOISY_FOLDER = re.compile(r"^snr-?[0-9.]+$")

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------------------------
# systems named on the command line


def _safe_name(text: str) -> str:
    return _NAME.sub("-", text).strip("-.") or "system"


@dataclass(frozen=True)
class SystemSpec:
    """One entry of `--systems`: a model name known to load_model, a checkpoint spec (`kind:PATH,...`) or
    `endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1]`; any of them may end in `,name=NAME`,
    the folder name of its predictions."""

    spec: str
    name: str

    @property
    def is_endpoint(self) -> bool:
        return self.spec.startswith("endpoint:")

    def load(self, options: Any = None) -> object:
        """Build the system (models are loaded here, not when the spec is parsed)."""
        if self.is_endpoint:
            return EndpointSystem.from_spec(self.spec, name=self.name)
        from interp.models.mini import load_model

        system = load_model(self.spec, options=options)
        return system


def _split_entries(text: str) -> list[str]:
    """Comma-separated specs; an entry `key=value` continues the spec before it (checkpoint and endpoint
    specs carry their own comma-separated fields)."""
    entries: list[str] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if entries and re.match(r"^[A-Za-z_]+=", entry) and (":" in entries[-1] or entry.startswith("name=")):
            entries[-1] += "," + entry
        else:
            entries.append(entry)
    return entries


def parse_systems(text: str) -> list[SystemSpec]:
    """The systems of `--systems` (checked, not loaded). Raises InterpError for an unknown model name, a
    malformed endpoint spec or two systems with the same name."""
    from interp.models.checkpoints import CHECKPOINT_SPECS
    from interp.models.mini import MODEL_CARDS

    specs: list[SystemSpec] = []
    for entry in _split_entries(text):
        head, *fields = entry.split(",")
        names = [f for f in fields if f.startswith("name=")]
        spec = ",".join([head] + [f for f in fields if not f.startswith("name=")])
        if entry.startswith("endpoint:"):
            EndpointSystem.from_spec(spec)  # validates the fields
            default = "endpoint-" + EndpointSystem.spec_fields(spec)["model"]
        elif ":" in spec:
            kind, _, rest = spec.partition(":")
            if kind not in CHECKPOINT_SPECS:
                raise InterpError(f"unknown system {entry!r}: a checkpoint spec is one of "
                                  f"{', '.join(CHECKPOINT_SPECS.values())}, an endpoint is endpoint:URL,model=NAME")
            default = f"{kind}-{Path(rest.split(',')[0]).name}"
        else:
            if spec not in MODEL_CARDS:
                raise InterpError(f"unknown system {spec!r}; known models: {', '.join(MODEL_CARDS)} (interp models "
                                  "list), a checkpoint spec or endpoint:URL,model=NAME")
            default = spec
        name = _safe_name(names[-1][len("name="):] if names else default)
        specs.append(SystemSpec(spec, name))
    if not specs:
        raise InterpError("no system given: --systems takes comma-separated model names, e.g. mini-ultravox,oracle")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise InterpError(f"two systems are called {spec.name!r}; add ,name=OTHER to one of them")
        seen.add(spec.name)
    return specs


def set_name(root: Path) -> str:
    """Name of a set's predictions file: the folder name, with the parent folder in front for the per-SNR
    folders that `interp data noise` writes (`sentiment-noise/snr10` -> `sentiment-noise-snr10`)."""
    root = Path(root).resolve()
    if _NOISY_FOLDER.match(root.name):
        return f"{root.parent.name}-{root.name}"
    return root.name


# ---------------------------------------------------------------------------------------------------------------
# answering one item


def _words(text: str) -> list[str]:
    return normalize_transcript(text).split()


def parse_choice(reply: str, choices: Sequence[str]) -> int:
    """Index of the choice a generated reply gives, or -1 (see module docstring for the rule)."""
    words = _words(reply)
    options = [(index, _words(choice)) for index, choice in enumerate(choices)]
    options = [(index, tokens) for index, tokens in options if tokens]
    starts = [(len(tokens), -index) for index, tokens in options if words[:len(tokens)] == tokens]
    if starts:
        return -max(starts)[1]
    best: tuple[int, int, int] | None = None  # (position, -length, index)
    for index, tokens in options:
        for position in range(len(words) - len(tokens) + 1):
            if words[position:position + len(tokens)] == tokens:
                key = (position, -len(tokens), index)
                best = key if best is None or key < best else best
                break
    return -1 if best is None else best[2]


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed (normalize_transcript), articles dropped, single spaces."""
    return " ".join(word for word in _words(text) if word not in _ARTICLES)


def match_answer(reply: str, answers: Sequence[str]) -> tuple[str, bool]:
    """(the reply's first non-empty line, whether it matches one of the accepted answers)."""
    line = next((line.strip() for line in reply.splitlines() if line.strip()), "")
    said = f" {normalize_answer(line)} "
    for answer in answers:
        wanted = normalize_answer(answer)
        if wanted and f" {wanted} " in said:
            return line, True
    return line, False


def _reads_text(system: object) -> bool:
    """True for systems that read the gold transcript instead of audio (the oracle, a bare text LLM)."""
    from interp.models.cascade import Oracle
    from interp.models.text_lm import TextLM

    return isinstance(system, (Oracle, TextLM))


_ASR_BATCH = 8


def _transcribe_batch(system: object, spoken_set: SpokenSet, items: Sequence[Item]) -> dict[str, tuple[str, float]]:
    """A cascade's transcripts of `items` in one ASR batch (Whisper pads every clip to 30 s, so batching
    is several times faster), with each item's share of the time; empty for other systems."""
    from interp.models.cascade import Cascade

    if not isinstance(system, Cascade):
        return {}
    started = time.perf_counter()
    texts = system.asr.transcribe([spoken_set.load_audio(item) for item in items])
    share = (time.perf_counter() - started) / len(items)
    return {item.id: (text, share) for item, text in zip(items, texts)}


def answer_item(system: object, spoken_set: SpokenSet, item: Item, prompt: TaskPrompt, *,
                heard: tuple[str, float] | None = None) -> dict[str, Any]:
    """One predictions line for one item (uncalibrated: `prediction` is the raw answer).

    heard: for a cascade, (transcript, seconds) from a batched ASR pass, so the ASR is not run again;
    its seconds count in the item's latency."""
    from interp.models.cascade import Cascade

    text_input = _reads_text(system)
    source: Any = item.transcript if text_input else spoken_set.load_audio(item)
    item_prompt = prompt.for_item(item)
    noise = item.speech.noise
    record: dict[str, Any] = {
        "id": item.id, "task": item.task, "parent_id": noise.parent_id if noise else None,
        "snr_db": noise.snr_db if noise else None,
        "label": item.label if isinstance(item.label, int) else list(item.label), "n_choices": len(item.choices),
    }
    started = time.perf_counter() - (heard[1] if heard else 0.0)
    transcript = None
    if isinstance(system, Cascade):
        transcript = heard[0] if heard else system.transcribe(source)
        llm, source = system.llm, transcript
    else:
        llm = system
    scores = reply = None
    if item.choices and hasattr(llm, "score_choices"):
        scores = np.asarray(llm.score_choices(source, item_prompt, list(item.choices)), dtype=np.float64)
    else:
        reply = llm.generate(source, item_prompt, max_new_tokens=prompt.max_new_tokens)
    latency = round(time.perf_counter() - started, 6)
    if transcript is not None:
        record["asr_transcript"] = transcript
    if item.choices:
        raw = int(np.argmax(scores)) if scores is not None else parse_choice(reply, item.choices)
        record.update(scores=None if scores is None else [float(s) for s in scores], raw_prediction=raw,
                      prediction=raw, calibration="none", correct=raw == item.label)
    elif item.task == "transcribe":
        hypothesis = reply.strip()
        record.update(scores=None, raw_prediction=None, prediction=hypothesis, calibration="none",
                      correct=normalize_transcript(hypothesis) == normalize_transcript(item.transcript),
                      wer=word_error_rate([item.transcript], [hypothesis]),
                      ref_words=len(_words(item.transcript)))
    else:
        answer, correct = match_answer(reply, item.label)
        record.update(scores=None, raw_prediction=None, prediction=answer, calibration="none", correct=correct)
    if reply is not None:
        record["reply"] = reply
    record["latency_s"] = latency
    return record


def check_scoring(system: object, spoken_set: SpokenSet, *, prompt_style: PromptStyle) -> None:
    """Refuse, before anything is written, a task prompt without its one audio slot, or a choice that cannot be
    scored as the system's model would write it (empty, or merging with the prompt's last token): checked on the
    first item of each task and choice set. Raises InterpError (ScoringError)."""
    from interp.models.cascade import Cascade, Oracle
    from interp.models.encoded import EncodedSpeechLM
    from interp.models.prompting import choice_delimiter, continuation_ids, split_prompt
    from interp.models.text_lm import TextLM

    llm = system.llm if isinstance(system, (Cascade, Oracle)) else system
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for item in spoken_set.items:
        if (item.task, item.choices) in seen:
            continue
        seen.add((item.task, item.choices))
        prompt = task_prompt(item.task, prompt_style).for_item(item)
        split_prompt(prompt)
        if not item.choices:
            continue
        if isinstance(llm, TextLM):
            continuation_ids(llm.tokenizer, llm.render(prompt, item.transcript), item.choices,
                             delimiter=choice_delimiter(prompt))
        elif isinstance(llm, EncodedSpeechLM):
            continuation_ids(llm.tokenizer, llm.answer_context(prompt), item.choices,
                             delimiter=choice_delimiter(prompt))


def finalise_choices(records: Sequence[dict[str, Any]], items: dict[str, Item], *,
                     calibration: Calibration) -> list[dict[str, Any]]:
    """The final lines: forced-choice lines with scores get raw_prediction = argmax(scores) and prediction =
    `choose` over the lines of the same task and choices under the run's calibration; others are unchanged."""
    out = [dict(record) for record in records]
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for index, record in enumerate(out):
        if record.get("scores") is not None:
            item = items[record["id"]]
            record["raw_prediction"] = int(np.argmax(record["scores"]))
            groups.setdefault((item.task, item.choices), []).append(index)
    for rows in groups.values():
        chosen = choose(np.array([out[row]["scores"] for row in rows]), calibration=calibration)
        for row, choice in zip(rows, chosen):
            record = out[row]
            record["prediction"] = int(choice)
            record["calibration"] = calibration
            record["correct"] = int(choice) == items[record["id"]].label
    return out


# ---------------------------------------------------------------------------------------------------------------
# predictions files


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_predictions(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The finished lines of a predictions file. A last line without its newline is kept when it is a whole
    JSON object and otherwise dropped (a run killed while writing it); with repair=True the file is mended
    to match. Any other malformed line raises DataError."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        try:
            whole = isinstance(json.loads(data[end:]), dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            whole = False
        if whole:
            data += b"\n"
            end = len(data)
            if repair:
                with path.open("ab") as out:
                    out.write(b"\n")
        else:
            _log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
            if repair:
                os.truncate(path, end)
    records = []
    for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg}); delete the file to start it "
                            "again") from None
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f"{path}:{number}: not a predictions line (no id)")
        records.append(record)
    return records


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar `<set>.json` of a predictions file, or None when there is none."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg})") from None


def _prompt_record(prompt: TaskPrompt) -> dict[str, Any]:
    return {"prompt": str(prompt.prompt), "style": prompt.style, "plain": isinstance(prompt.prompt, PlainPrompt),
            "max_new_tokens": prompt.max_new_tokens}


def _describe_system(system: object, name: str, spec: str | None) -> dict[str, Any]:
    from interp.models.base import describe_model
    from interp.models.mini import MODEL_CARDS

    described: dict[str, Any] = {"name": name, **describe_model(system, spec), "model": getattr(system, "name", None)}
    card = MODEL_CARDS.get(spec or "")
    if card is not None:
        described["card"] = asdict(card)
    if isinstance(system, EndpointSystem):
        described["endpoint"] = system.config()
    return described


def run_system(system: object, spoken_set: SpokenSet, out_dir: Path, *, system_name: str, limit: int | None = None,
               progress: Progress | None = None, spec: str | None = None, seed: int = 0,
               prompt_style: PromptStyle = DEFAULT_PROMPT_STYLE, calibration: Calibration = "none") -> Path:
    """Answer the set's items (the first `limit` of them) with `system`; returns the predictions file.

    The final file holds, in set order, every item answered so far: a rerun with a smaller limit keeps the
    lines an earlier, larger run wrote, and calibration uses all of them.

    prompt_style: how tasks are put (interp.task_prompts: "chat" through each model's template, or "few-shot").
    calibration: "none" (the default: each answer depends on its item alone) or "batch" (see module docstring).
    Resumable (finished lines are kept, only missing items are answered) and finalised atomically under the
    calibration asked for; lines keep their raw scores, so a rerun with another calibration re-finalises a
    finished file without running the system again. progress(done, total) is called once at the start and
    after each item.
    seed is recorded only: greedy decoding and log-likelihood scoring draw no random numbers.
    Raises InterpError for a task without a prompt, or for a file made with other prompts or another system.
    """
    if limit is not None and limit < 1:
        raise InterpError(f"--limit must be at least 1, got {limit}")
    items = spoken_set.items[:limit] if limit else spoken_set.items
    check_calibration(calibration)
    prompts = {task: task_prompt(task, prompt_style) for task in dict.fromkeys(item.task for item in spoken_set.items)}
    name = set_name(spoken_set.root)
    folder = Path(out_dir) / system_name
    path, sidecar = folder / f"{name}{PREDICTIONS_SUFFIX}", folder / f"{name}{SIDECAR_SUFFIX}"
    answers_by = "log-likelihood" if hasattr(getattr(system, "llm", system), "score_choices") else "generate+parse"
    config = {
        "system": _describe_system(system, system_name, spec),
        "prompts": {task: _prompt_record(prompt) for task, prompt in prompts.items()},
        "prompt_style": prompt_style,
        "calibration": {"name": calibration, "rule": CALIBRATION_RULES[calibration]},
        "rules": {"forced_choice": answers_by, "length_policy": LENGTH_POLICY,
                  "parse": PARSE_RULE, "open_answers": OPEN_ANSWER_RULE},
        "input": "gold transcript" if _reads_text(system) else "audio",
    }
    check_scoring(system, spoken_set, prompt_style=prompt_style)
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_sidecar(sidecar)
    if previous is not None:
        _check_same_config(previous.get("config", {}), config, sidecar)
    set_info = {"name": name, "path": str(spoken_set.root), "items": len(spoken_set)}
    _write_json(sidecar, {"status": "running", "config": config, "set": set_info, "limit": limit, "seed": seed})

    by_id = {item.id: item for item in spoken_set.items}
    done: dict[str, dict[str, Any]] = {}
    for record in read_predictions(path, repair=True):
        if record["id"] not in by_id:
            raise DataError(f"{path} holds item {record['id']!r}, which {spoken_set.root} does not have: the set "
                            "changed since; choose another --out")
        done[record["id"]] = record
    pending = [item for item in items if item.id not in done]
    total, finished = len(items), len(items) - len(pending)
    if progress:
        progress(finished, total)
    with path.open("a", encoding="utf-8") as out:
        for start in range(0, len(pending), _ASR_BATCH):
            chunk = pending[start:start + _ASR_BATCH]
            heard = _transcribe_batch(system, spoken_set, chunk)
            for item in chunk:
                record = answer_item(system, spoken_set, item, prompts[item.task], heard=heard.get(item.id))
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                done[item.id] = record
                finished += 1
                if progress:
                    progress(finished, total)

    ordered = [done[item.id] for item in spoken_set.items if item.id in done]
    final = finalise_choices(ordered, by_id, calibration=calibration)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for record in final:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    counts = _counts(final)
    _write_json(sidecar, {
        "status": "done", "config": config, "set": set_info, "limit": limit, "seed": seed, "counts": counts,
        "accuracy": counts["correct"] / counts["items"] if counts["items"] else None,
        "provenance": provenance(command="interp behave", config={"system": spec or system_name, "set": str(
            spoken_set.root), "limit": limit}, seed=seed),
    })
    return path


def _check_same_config(previous: dict[str, Any], config: dict[str, Any], sidecar: Path) -> None:
    for key in ("prompts", "rules", "input"):
        if key in previous and previous[key] != json.loads(json.dumps(config[key])):
            raise InterpError(f"{sidecar}: these predictions were made with other {key}; choose another --out or "
                              "delete the folder to start again")
    old_class = previous.get("system", {}).get("class")
    if old_class is not None and old_class != config["system"]["class"]:
        raise InterpError(f"{sidecar}: these predictions were made by a {old_class}, not a "
                          f"{config['system']['class']}; choose another --out")
    old_weights, weights = previous.get("system", {}).get("weights"), config["system"].get("weights")
    if old_weights != weights:
        raise InterpError(f"{sidecar}: these predictions were made with other weights ({old_weights}, now "
                          f"{weights}); choose another --out")


def _counts(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_task: dict[str, dict[str, int]] = {}
    for record in records:
        task = by_task.setdefault(record["task"], {"items": 0, "correct": 0})
        task["items"] += 1
        task["correct"] += bool(record["correct"])
    counts: dict[str, Any] = {
        "items": len(records), "correct": sum(bool(r["correct"]) for r in records),
        "unparsed": sum(1 for r in records if r.get("prediction") == -1), "by_task": by_task,
    }
    words = [r for r in records if "wer" in r]
    if words:
        counts["wer"] = _corpus_wer(words)
    return counts


def _corpus_wer(records: Iterable[dict[str, Any]]) -> float | None:
    """Pooled WER of transcribe lines: sum of per-item edits (wer x ref_words) over the reference words."""
    edits = words = 0.0
    for record in records:
        edits += record["wer"] * record["ref_words"]
        words += record["ref_words"]
    return edits / words if words else None


def run_summary(run_dir: Path) -> list[dict[str, Any]]:
    """One row per finished predictions file of a run: system, set, items, accuracy, wer (or None)."""
    rows = []
    for sidecar in sorted(Path(run_dir).glob(f"*/*{SIDECAR_SUFFIX}")):
        info = read_sidecar(sidecar)
        if not info or info.get("status") != "done" or "counts" not in info:
            continue
        counts = info["counts"]
        rows.append({"system": sidecar.parent.name, "set": sidecar.stem, "items": counts["items"],
                     "accuracy": info.get("accuracy"), "wer": counts.get("wer"), "unparsed": counts["unparsed"]})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# a system behind an OpenAI-compatible chat endpoint


class EndpointSystem:
    """A speech model behind an OpenAI-compatible `/chat/completions` endpoint.

    The prompt's text before and after the audio placeholder become text parts around one `input_audio` part
    (base64 16-bit PCM wav, format "wav") of a single user message; decoding is greedy (temperature 0).
    The API key is read from the environment variable `api_key_env` at each request (none sent when it is
    unset) and never logged or written. raw_prompts=True sends `"raw_prompt": true` with PlainPrompt prompts,
    an extension `interp serve` understands (the model then reads the prompt as written, without its chat
    template); leave it off for other services, which may refuse unknown fields. There are no log-likelihoods,
    so forced-choice items are answered by generation + parse_choice.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 raw_prompts: bool = False, name: str | None = None, retries: int = 2) -> None:
        if not re.match(r"^https?://", base_url):
            raise InterpError(f"endpoint URL {base_url!r} must start with http:// or https:// (e.g. "
                              "http://127.0.0.1:8000/v1)")
        if not model:
            raise InterpError("an endpoint needs model=NAME")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.raw_prompts = raw_prompts
        self.retries = retries
        self.name = name or f"endpoint-{model}"

    @staticmethod
    def spec_fields(spec: str) -> dict[str, str]:
        """The fields of `endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1][,name=N]`."""
        body = spec[len("endpoint:"):] if spec.startswith("endpoint:") else spec
        url, *rest = body.split(",")
        fields = {"url": url.strip()}
        known = {"model", "key_env", "timeout", "raw_prompts", "name"}
        for entry in rest:
            key, eq, value = entry.partition("=")
            if not eq or key.strip() not in known:
                raise InterpError(f"endpoint spec {spec!r}: unknown field {entry!r}; write "
                                  "endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1]")
            fields[key.strip()] = value.strip()
        if "model" not in fields or not fields["url"]:
            raise InterpError(f"endpoint spec {spec!r} needs a URL and model=NAME, e.g. "
                              "endpoint:http://127.0.0.1:8000/v1,model=mini-cascade")
        return fields

    @classmethod
    def from_spec(cls, spec: str, *, name: str | None = None) -> EndpointSystem:
        fields = cls.spec_fields(spec)
        try:
            timeout = float(fields.get("timeout", 120))
        except ValueError:
            raise InterpError(f"endpoint spec {spec!r}: timeout must be seconds") from None
        return cls(fields["url"], fields["model"], api_key_env=fields.get("key_env", "OPENAI_API_KEY"),
                   timeout=timeout, raw_prompts=fields.get("raw_prompts", "0").lower() in ("1", "true", "yes"),
                   name=name or fields.get("name"))

    def config(self) -> dict[str, Any]:
        """What the sidecar records: URL, model, the NAME of the key variable (never its value), options."""
        return {"url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                "timeout": self.timeout, "raw_prompts": self.raw_prompts}

    def request_body(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int) -> dict[str, Any]:
        """The chat-completions request for one (audio, prompt)."""
        from interp.models.prompting import split_prompt
        from interp.serve import wav_base64

        before, after = split_prompt(prompt)
        parts: list[dict[str, Any]] = []
        if before:
            parts.append({"type": "text", "text": before})
        parts.append({"type": "input_audio", "input_audio": {"data": wav_base64(audio), "format": "wav"}})
        if after:
            parts.append({"type": "text", "text": after})
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": parts}],
                                "max_tokens": max_new_tokens, "temperature": 0}
        if self.raw_prompts and isinstance(prompt, PlainPrompt):
            body["raw_prompt"] = True
        return body

    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        """The endpoint's reply (message content) to the prompt with the audio in its placeholder."""
        reply = self._post("/chat/completions", self.request_body(audio, prompt, max_new_tokens=max_new_tokens))
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InterpError(f"{self.base_url}: the reply is not a chat completion (no choices[0].message)") from None
        return (content or "").strip()

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.base_url + route
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as error:
                message = _redact(_error_message(error), key)
                if error.code in (429, 500, 502, 503, 504) and attempt < self.retries:
                    _log.warning("%s answered %d (%s); retrying", url, error.code, message)
                    time.sleep(2.0 ** attempt)
                    continue
                hint = f" (is ${self.api_key_env} set?)" if error.code in (401, 403) else ""
                raise InterpError(f"{url} answered HTTP {error.code}: {message}{hint}") from None
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise InterpError(f"cannot reach {url}: {_redact(str(reason), key)}") from None
            except json.JSONDecodeError:
                raise InterpError(f"{url} did not answer with JSON") from None
        raise AssertionError("unreachable")


def _error_message(error: Any) -> str:
    try:
        payload = json.loads(error.read().decode("utf-8"))
        return str(payload.get("error", {}).get("message") or payload)
    except Exception:  # noqa: BLE001 - any unreadable error body
        return str(error.reason)


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


# ---------------------------------------------------------------------------------------------------------------
# statistics of a run


def base_id(record: dict[str, Any]) -> str:
    """The clean item a predictions line belongs to: parent_id, else the id without its `.snr<N>` suffix."""
    return record.get("parent_id") or _SNR_SUFFIX.sub("", record["id"])


def _load_run(run_dir: Path) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[str], list[str]]:
    """{set: {system: lines}} of every finished file, the systems in run order, and the files skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found (make one with interp behave --out {run_dir})")
    order: list[str] = []
    set_order: list[str] = []
    run_file = run_dir / "run.json"
    if run_file.is_file():
        recorded = json.loads(run_file.read_text(encoding="utf-8"))
        order, set_order = list(recorded.get("systems", [])), list(recorded.get("sets", []))
    sets: dict[str, dict[str, list[dict[str, Any]]]] = {}
    skipped: list[str] = []
    for path in sorted(run_dir.glob(f"*/*{PREDICTIONS_SUFFIX}")):
        info = read_sidecar(path.with_suffix(SIDECAR_SUFFIX))
        if info is None or info.get("status") != "done":
            skipped.append(str(path.relative_to(run_dir)))
            continue
        records = read_predictions(path)
        if records:
            sets.setdefault(path.stem, {})[path.parent.name] = records
    if not sets:
        raise DataError(f"{run_dir}: no finished predictions files (<system>/<set>.jsonl with a done <set>.json)")
    found = sorted({system for per_set in sets.values() for system in per_set})
    systems = [s for s in order if s in found] + [s for s in found if s not in order]
    names = [n for n in set_order if n in sets] + sorted(n for n in sets if n not in set_order)
    return {name: sets[name] for name in names}, systems, skipped


def _estimate(estimate: Any) -> dict[str, float | int]:
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high, "n": estimate.n}


def _nan_to_none(value: float) -> float | None:
    return None if value != value else value


def run_statistics(run_dir: Path, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Statistics of every finished predictions file of a run (the stats.json layout, see `interp stats`).

    Per set, on the items every system answered: accuracy with bootstrap CI per system; for forced-choice sets
    the kappa of every pair and the accuracy difference with paired bootstrap CIs (interp.stats.pairwise_kappa),
    the conditional error overlap with its chance level 1/(K-1) for K >= 3 choices; McNemar for every pair, with
    Benjamini-Hochberg q-values over ALL McNemar tests of the run; WER for transcription sets. Accuracy vs SNR
    for every clean set with its noisy variants (matched by base item ids).
    """
    from interp import stats as st

    sets, systems, skipped = _load_run(run_dir)
    out_sets: dict[str, Any] = {}
    tests: list[dict[str, Any]] = []
    for name in sets:
        per_system = sets[name]
        names = [s for s in systems if s in per_system]
        common = set.intersection(*(set(r["id"] for r in per_system[s]) for s in names))
        ids = [r["id"] for r in per_system[names[0]] if r["id"] in common]
        lines = {s: {r["id"]: r for r in per_system[s]} for s in names}
        first = [lines[names[0]][i] for i in ids]
        tasks = sorted({r["task"] for r in first})
        is_open = any(r["n_choices"] == 0 for r in first)
        snrs = sorted({r.get("snr_db") for r in first}, key=lambda v: (v is not None, -(v or 0)))
        entry: dict[str, Any] = {
            "task": ",".join(tasks), "open": is_open, "n_items": len(ids),
            "n_choices": max((r["n_choices"] for r in first), default=0),
            "snr_db": snrs[0] if len(snrs) == 1 else (snrs or None), "systems": names, "accuracy": {},
            "kappa": [], "accuracy_difference": [], "error_overlap": [], "mcnemar": [],
            "calibration": {s: sorted({str(lines[s][i].get("calibration", "none")) for i in ids}) for s in names},
        }
        correct = {s: np.array([bool(lines[s][i]["correct"]) for i in ids]) for s in names}
        if ids:
            if not is_open and len(names) >= 2:
                gold = np.array([lines[names[0]][i]["label"] for i in ids])
                predictions = {s: np.array([lines[s][i]["prediction"] for i in ids]) for s in names}
                agreement = st.pairwise_kappa(predictions, gold, n_boot=n_boot, level=level, seed=seed)
                entry["accuracy"] = {s: _estimate(agreement.accuracy[s]) for s in names}
                for a, b in agreement.pairs:
                    entry["kappa"].append({"a": a, "b": b, **_estimate(agreement.kappa[a, b])})
                    entry["accuracy_difference"].append({"a": a, "b": b,
                                                         **_estimate(agreement.accuracy_difference[a, b])})
                    if entry["n_choices"] >= 3:
                        overlap = st.error_overlap(predictions[a], predictions[b], gold, entry["n_choices"])
                        entry["error_overlap"].append({"a": a, "b": b, "value": _nan_to_none(overlap.value),
                                                       "n_both_wrong": overlap.n_both_wrong, "chance": overlap.chance})
            else:
                entry["accuracy"] = {s: _estimate(st.accuracy_with_ci(correct[s], n_boot=n_boot, level=level,
                                                                      seed=seed)) for s in names}
            for index, a in enumerate(names):
                for b in names[index + 1:]:
                    test = st.mcnemar(correct[a], correct[b])
                    record = {"a": a, "b": b, "only_a_right": test.b, "only_b_right": test.c,
                              "statistic": test.statistic, "p_value": test.p_value, "method": test.method,
                              "q_value": None}
                    entry["mcnemar"].append(record)
                    tests.append(record)
        if "transcribe" in tasks:
            entry["wer"] = {s: _corpus_wer(lines[s][i] for i in ids if "wer" in lines[s][i]) for s in names}
        out_sets[name] = entry
    if tests:
        for record, q in zip(tests, st.benjamini_hochberg([t["p_value"] for t in tests])):
            record["q_value"] = float(q)
    snr = _snr_tables(sets, systems, n_boot=n_boot, level=level, seed=seed)
    return {
        "run": str(run_dir), "systems": systems, "n_boot": n_boot, "level": level, "seed": seed,
        "fdr": {"method": "benjamini-hochberg", "family": "every McNemar test of the run", "m": len(tests)},
        "sets": out_sets, "snr": snr, "skipped": skipped,
        "provenance": provenance(command="interp stats", config={"run": str(run_dir), "n_boot": n_boot,
                                                                "level": level}, seed=seed),
    }


def _snr_tables(sets: dict[str, dict[str, list[dict[str, Any]]]], systems: list[str], *, n_boot: int, level: float,
                seed: int) -> dict[str, Any]:
    """Accuracy by SNR for each clean set and the noisy sets made from its items."""
    from interp.stats import accuracy_by_snr

    def base_ids(name: str) -> set[str]:
        return {base_id(r) for lines in sets[name].values() for r in lines}

    def is_clean(name: str) -> bool:
        return all(r.get("snr_db") is None for lines in sets[name].values() for r in lines)

    clean = [name for name in sets if is_clean(name)]
    groups: dict[str, list[str]] = {name: [name] for name in clean}
    for name in sets:
        if name in groups:
            continue
        ids = base_ids(name)
        parents = [c for c in clean if ids <= base_ids(c)]
        if parents:
            groups[parents[0]].append(name)
            continue
        twin = next((group for group in groups if group not in clean and base_ids(group) == ids), None)
        if twin is None:
            groups[name] = [name]
        else:
            groups[twin].append(name)

    def clean_then_falling_snr(name: str) -> tuple[bool, float]:
        snr = next(r.get("snr_db") for lines in sets[name].values() for r in lines)
        return (snr is not None, -(snr or 0.0))

    tables: dict[str, Any] = {}
    for group, members in groups.items():
        members.sort(key=clean_then_falling_snr)
        levels = {r.get("snr_db") for m in members for lines in sets[m].values() for r in lines}
        if len(levels) < 2:
            continue
        rows = [(system, r.get("snr_db"), bool(r["correct"])) for system in systems for m in members
                if system in sets[m] for r in sets[m][system]]
        table = accuracy_by_snr(rows, n_boot=n_boot, level=level, seed=seed)
        tables[group] = {"sets": members, "rows": [asdict(row) for row in table]}
    return tables


def record_run(run_dir: Path, *, systems: Sequence[str], sets: Sequence[str], config: dict[str, Any]) -> Path:
    """Write (or extend) `RUN/run.json`: the systems and sets in the order they were given, and provenance.
    `interp stats` lists systems and sets in this order."""
    path = Path(run_dir) / "run.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged_systems = list(dict.fromkeys([*previous.get("systems", []), *systems]))
    merged_sets = list(dict.fromkeys([*previous.get("sets", []), *sets]))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _write_json(path, {"systems": merged_systems, "sets": merged_sets,
                       "provenance": provenance(command="interp behave", config=config, seed=None)})
    return path
