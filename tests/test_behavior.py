"""The behaviour harness (interp.behavior) and `interp behave` / `interp stats`, on tiny models and hand-made sets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.multitest import multipletests

from interp.behavior import (
    Prediction,
    match_answer,
    normalize_answer,
    parse_choice,
    parse_systems,
    read_predictions,
    run_system,
    set_name,
)
from interp.data.audio import write_wav
from interp.data.manifest import SpokenSet
from interp.errors import InterpError
from interp.models.cascade import Cascade, Oracle
from interp.models.tiny import tiny_text_lm, tiny_ultravox
from interp.stats.run import run_statistics
from interp.task_prompts import task_prompt
from tests.helpers import run_cli

_SENTIMENT = ("negative", "positive")
_YESNO = ("no", "yes")


def _item(index: int, task: str, transcript: str, choices: tuple[str, ...], label, seconds: float) -> dict:
    return {"id": f"{task}-{index:03d}", "task": task, "audio": f"audio/{task}-{index:03d}.wav", "sample_rate": 16000,
            "duration": seconds, "transcript": transcript, "choices": list(choices), "label": label,
            "source": {"dataset": "test", "split": "test", "original_id": str(index)},
            "speech": {"kind": "tts", "engine": "test"}}


def make_set(root: Path, records: list[dict], *, seed: int = 0) -> SpokenSet:
    """A spoken set of the given manifest records, each with its own noise clip of the record's duration."""
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for record in records:
        samples = np.round(rng.standard_normal(int(record["duration"] * 16000)) * 0.05 * 32768) / 32768
        write_wav(root / record["audio"], samples.astype(np.float32))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return SpokenSet.open(root)


def sentiment_records(n: int, *, seconds: float = 0.4) -> list[dict]:
    texts = ["the movie was wonderful", "the service was terrible"]
    return [_item(i, "sentiment", texts[i % 2], _SENTIMENT, 1 - i % 2, seconds + 0.01 * (i % 5)) for i in range(n)]


@pytest.fixture(scope="module")
def ultravox():
    return tiny_ultravox()


@pytest.fixture(scope="module")
def oracle():
    return Oracle(tiny_text_lm(), name="tiny-oracle")


@pytest.fixture()
def mixed_set(tmp_path: Path) -> SpokenSet:
    """Three tasks with different choices (sentiment, yesno, csqa): calibration groups by task and choices."""
    records = sentiment_records(5)
    records += [_item(i, "yesno", "is a dog an animal ?", _YESNO, i % 2, 0.3) for i in range(4)]
    records += [_item(i, "csqa", "what did you hear ?", ("world", "sports", "business"), i % 3, 0.3) for i in range(3)]
    return make_set(tmp_path / "mixed", records)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- forced choice: scores, calibration -------------------------------------------------------------------------


def test_speech_scores_equal_manual_log_probability_sums(tmp_path: Path, ultravox, mixed_set: SpokenSet) -> None:
    path = run_system(ultravox, mixed_set, tmp_path / "run", system_name="tiny-ultravox")
    assert path == tmp_path / "run" / "tiny-ultravox" / "mixed.jsonl"
    lines = _lines(path)
    assert [line["id"] for line in lines] == [item.id for item in mixed_set.items]
    for item, line in zip(mixed_set.items, lines):
        prompt = task_prompt(item.task).for_item(item)
        after = ultravox.answer_context(prompt)
        tail = ultravox.tokenizer(after.rstrip(), add_special_tokens=False)["input_ids"]
        batch = ultravox.prepare([mixed_set.load_audio(item)], [prompt])
        batch_ids = batch.input_ids[:, :batch.input_ids.shape[1] - (len(ultravox.tokenizer(
            after, add_special_tokens=False)["input_ids"]) - len(tail))]  # the prompt without trailing whitespace
        expected = []
        for choice in item.choices:
            whole = ultravox.tokenizer(after + choice, add_special_tokens=False)["input_ids"]  # chat: no delimiter
            ids = whole[len(tail):]
            inputs = dict(batch.inputs)
            inputs["input_ids"] = torch.cat([batch_ids, torch.tensor([ids])], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            with torch.no_grad():
                log_probs = torch.log_softmax(ultravox.model(**inputs).logits[0].double(), dim=-1)
            start = batch_ids.shape[1]
            expected.append(sum(log_probs[start + k - 1, token].item() for k, token in enumerate(ids)))
        np.testing.assert_allclose(line["scores"], expected, rtol=0, atol=1e-4)
        assert line["n_choices"] == len(item.choices) and line["label"] == item.label and line["snr_db"] is None


def test_text_scores_equal_manual_log_probability_sums(tmp_path: Path, oracle, mixed_set: SpokenSet) -> None:
    """The oracle reads the gold transcript in the placeholder; few-shot prompts are written as they are and the
    answer follows 'Answer:' after a space."""
    lines = _lines(run_system(oracle, mixed_set, tmp_path / "run", system_name="oracle", prompt_style="few-shot"))
    model, tokenizer = oracle.llm.model, oracle.llm.tokenizer
    for item, line in zip(mixed_set.items, lines):
        before, after = str(task_prompt(item.task, "few-shot").for_item(item)).split("<|audio|>")
        assert after.endswith("Answer:") or after.endswith("):")
        head = tokenizer(before + item.transcript + after, add_special_tokens=False)["input_ids"]
        expected = []
        for choice in item.choices:
            ids = tokenizer(before + item.transcript + after + " " + choice,
                            add_special_tokens=False)["input_ids"][len(head):]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([head + ids])).logits[0].double()
            log_probs = torch.log_softmax(logits, dim=-1)
            expected.append(sum(log_probs[len(head) + k - 1, token].item() for k, token in enumerate(ids)))
        np.testing.assert_allclose(line["scores"], expected, rtol=0, atol=1e-4)


class _CountingASR:
    """An ASR that names each clip by its length, and records the batches it was given."""

    name = "counting-asr"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def transcribe(self, audio) -> list[str]:
        self.batches.append(len(audio))
        return [f"clip of {len(clip)} samples" for clip in audio]


def test_cascade_transcribes_in_batches_and_scores_its_transcript(tmp_path: Path, oracle) -> None:
    spoken = make_set(tmp_path / "s", sentiment_records(11))
    asr = _CountingASR()
    lines = _lines(run_system(Cascade(asr, oracle.llm, name="tiny-cascade"), spoken, tmp_path / "run",
                              system_name="tiny-cascade"))
    assert asr.batches == [8, 3]
    prompt = task_prompt("sentiment").prompt
    for item, line in zip(spoken.items, lines):
        heard = f"clip of {len(spoken.load_audio(item))} samples"
        assert line["asr_transcript"] == heard
        np.testing.assert_allclose(line["scores"], oracle.llm.score_choices(heard, prompt, list(item.choices)),
                                   rtol=0, atol=1e-9)
        assert line["latency_s"] > 0


def test_predictions_are_uncalibrated_unless_asked(tmp_path: Path, ultravox, mixed_set: SpokenSet) -> None:
    """By default each answer is the argmax of its own scores; --calibrate batch re-finalises the same lines
    without running the system again, subtracting each choice's mean per task and choice set, and says so."""
    path = run_system(ultravox, mixed_set, tmp_path / "run", system_name="tiny-ultravox")
    lines = _lines(path)
    for line in lines:
        assert line["prediction"] == line["raw_prediction"] == int(np.argmax(line["scores"]))
        assert line["calibration"] == "none"
    assert json.loads(path.with_suffix(".json").read_text())["config"]["calibration"]["name"] == "none"

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run re-finalised under another calibration must not score again")

    scored = ultravox.score_choices
    ultravox.score_choices = refuse
    try:
        path = run_system(ultravox, mixed_set, tmp_path / "run", system_name="tiny-ultravox", calibration="batch")
    finally:
        ultravox.score_choices = scored
    calibrated = _lines(path)
    changed = 0
    for task in ("sentiment", "yesno", "csqa"):
        group = [line for line in calibrated if line["task"] == task]
        scores = np.array([line["scores"] for line in group])
        expected = (scores - scores.mean(axis=0, keepdims=True)).argmax(axis=1)
        assert [line["raw_prediction"] for line in group] == scores.argmax(axis=1).tolist()
        assert [line["prediction"] for line in group] == expected.tolist()
        assert all(line["calibration"] == "batch" for line in group)
        assert [line["correct"] for line in group] == [int(p) == line["label"] for p, line in zip(expected, group)]
        changed += int((expected != scores.argmax(axis=1)).sum())
    assert changed > 0  # the check could fail: calibration moved some answers on this set
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config"]["calibration"]["name"] == "batch"
    assert sidecar["status"] == "done" and sidecar["counts"]["items"] == len(lines)
    assert sidecar["counts"]["correct"] == sum(line["correct"] for line in calibrated)
    assert sidecar["config"]["prompts"]["sentiment"]["prompt"] == str(task_prompt("sentiment").prompt)
    assert sidecar["config"]["rules"]["forced_choice"] == "log-likelihood"
    assert "sum" in sidecar["config"]["rules"]["length_policy"] and sidecar["provenance"]["command"] == "interp behave"


# --- resuming ---------------------------------------------------------------------------------------------------


def test_resume_answers_only_missing_items(tmp_path: Path, ultravox, monkeypatch) -> None:
    spoken = make_set(tmp_path / "sent", sentiment_records(7))
    path = run_system(ultravox, spoken, tmp_path / "run", system_name="uv", limit=3)
    first = {line["id"]: line for line in _lines(path)}
    assert len(first) == 3
    assert json.loads(path.with_suffix(".json").read_text())["limit"] == 3

    calls = []
    original = ultravox.score_choices
    monkeypatch.setattr(ultravox, "score_choices", lambda *a, **k: calls.append(1) or original(*a, **k))
    # a run killed while writing its fourth line: status running, a torn last line
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "status": "running"}))
    with path.open("a") as out:
        out.write('{"id": "sentiment-003", "task": "sent')
    progress = []
    run_system(ultravox, spoken, tmp_path / "run", system_name="uv", progress=lambda d, t: progress.append((d, t)))
    assert len(calls) == 4
    assert progress[0] == (3, 7) and progress[-1] == (7, 7)
    lines = _lines(path)
    assert [line["id"] for line in lines] == [item.id for item in spoken.items]
    for line in lines[:3]:
        assert line["scores"] == first[line["id"]]["scores"] and line["latency_s"] == first[line["id"]]["latency_s"]
    # a finished run has nothing left to answer
    run_system(ultravox, spoken, tmp_path / "run", system_name="uv")
    assert len(calls) == 4


def test_resume_refuses_other_prompts(tmp_path: Path, ultravox) -> None:
    spoken = make_set(tmp_path / "sent", sentiment_records(2))
    path = run_system(ultravox, spoken, tmp_path / "run", system_name="uv")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["config"]["prompts"]["sentiment"]["prompt"] = "something else <|audio|>"
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(InterpError, match="other prompts"):
        run_system(ultravox, spoken, tmp_path / "run", system_name="uv")


def test_resume_refuses_answers_made_with_other_weights(tmp_path: Path, ultravox, monkeypatch) -> None:
    """A system whose name does not fix its weights (mini-ultravox's projector) records their fingerprint."""
    spoken = make_set(tmp_path / "sent", sentiment_records(2))
    monkeypatch.setattr(ultravox, "weights", {"projector": "a.safetensors", "sha256": "aa"})
    path = run_system(ultravox, spoken, tmp_path / "run", system_name="uv")
    assert json.loads(path.with_suffix(".json").read_text())["config"]["system"]["weights"]["sha256"] == "aa"
    run_system(ultravox, spoken, tmp_path / "run", system_name="uv")  # same weights: resumes
    monkeypatch.setattr(ultravox, "weights", {"projector": "a.safetensors", "sha256": "bb"})
    with pytest.raises(InterpError, match="other weights"):
        run_system(ultravox, spoken, tmp_path / "run", system_name="uv")


def test_killed_behave_run_resumes_without_recomputing(tmp_path: Path) -> None:
    """SIGKILL an `interp behave` subprocess mid-run; the rerun keeps every finished line as it was."""
    spoken = make_set(tmp_path / "sent", sentiment_records(30, seconds=0.3))
    run = tmp_path / "run"
    predictions = run / "tiny-ultravox" / "sent.jsonl"
    command = [sys.executable, "-m", "interp", "behave", "--systems", "tiny-ultravox", "--data", str(spoken.root),
               "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if predictions.is_file() and predictions.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed = read_predictions(predictions)
    assert 3 <= len(killed) < 30
    assert json.loads(predictions.with_suffix(".json").read_text())["status"] == "running"
    result = run_cli("behave", "--systems", "tiny-ultravox", "--data", spoken.root, "--out", run)
    assert result.returncode == 0, result.stderr
    final = {line["id"]: line for line in _lines(predictions)}
    assert len(final) == 30 == len(_lines(predictions))
    for line in killed:
        assert final[line.id]["scores"] == list(line.scores)
        assert final[line.id]["latency_s"] == line.latency_s
    assert "tiny-ultravox" in result.stdout and "sent" in result.stdout


# --- open tasks and generation + parsing -----------------------------------------------------------------------


class Scripted:
    """A duck-typed speech system without scores: replies from a list, in order."""

    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []

    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        assert audio.dtype == np.float32 and audio.ndim == 1
        self.prompts.append(prompt)
        return self.replies.pop(0)


def test_open_answers_transcripts_and_parsed_choices(tmp_path: Path) -> None:
    records = [
        _item(0, "triviaqa", "what is the capital of france ?", (), ["Paris", "Paris, France"], 0.3),
        _item(1, "triviaqa", "how many legs does a spider have ?", (), ["eight", "8"], 0.3),
        _item(0, "transcribe", "the team won the cup final", (), ["the team won the cup final"], 0.3),
        _item(1, "transcribe", "shares rose after the report", (), ["shares rose after the report"], 0.3),
        _item(0, "mustard", "oh great , another meeting", ("not sarcastic", "sarcastic"), 1, 0.3),
        _item(1, "mustard", "thanks for the help", ("not sarcastic", "sarcastic"), 0, 0.3),
        _item(2, "mustard", "whatever", ("not sarcastic", "sarcastic"), 0, 0.3),
    ]
    spoken = make_set(tmp_path / "open", records)
    system = Scripted(["The Paris!\nQuestion: what else", "six", "The team won the cup, final.",
                       "shares rose after report", "Sarcastic.", "It is not sarcastic at all", "I cannot tell"])
    lines = _lines(run_system(system, spoken, tmp_path / "run", system_name="scripted"))
    trivia, transcripts, sarcasm = lines[:2], lines[2:4], lines[4:]
    assert [line["prediction"] for line in trivia] == ["The Paris!", "six"]
    assert [line["correct"] for line in trivia] == [True, False]
    assert trivia[0]["reply"] == "The Paris!\nQuestion: what else" and trivia[0]["scores"] is None
    assert [line["correct"] for line in transcripts] == [True, False]
    assert transcripts[0]["wer"] == 0.0 and transcripts[1]["wer"] == pytest.approx(1 / 5)
    assert [line["prediction"] for line in sarcasm] == [1, 0, -1]
    assert [line["correct"] for line in sarcasm] == [True, True, False]
    assert all(line["calibration"] == "none" for line in sarcasm)
    sidecar = json.loads((tmp_path / "run" / "scripted" / "open.json").read_text())
    assert sidecar["counts"]["unparsed"] == 1 and sidecar["counts"]["wer"] == pytest.approx(1 / 11)
    assert sidecar["config"]["rules"]["forced_choice"] == "generate+parse"
    assert system.prompts[2] == task_prompt("transcribe").prompt


def test_parse_choice_rules() -> None:
    assert parse_choice("positive\n\nReview: it was bad", _SENTIMENT) == 1
    assert parse_choice("  **Negative**.", _SENTIMENT) == 0
    assert parse_choice("I think it is positive, not negative", _SENTIMENT) == 1
    assert parse_choice("positively great", _SENTIMENT) == -1
    assert parse_choice("", _SENTIMENT) == -1
    sarcasm = ("not sarcastic", "sarcastic")
    assert parse_choice("not sarcastic", sarcasm) == 0
    assert parse_choice("Sarcastic, clearly", sarcasm) == 1
    assert parse_choice("this is not sarcastic", sarcasm) == 0
    assert parse_choice("The answer is Sci/Tech.", ("World", "Sports", "Business", "Sci/Tech")) == 3


def test_open_answer_normalisation() -> None:
    assert normalize_answer("The  Beatles!") == "beatles"
    assert match_answer("\n  An apple a day\nmore", ["apple"]) == ("An apple a day", True)
    assert match_answer("pineapple", ["apple"]) == ("pineapple", False)
    assert match_answer("", ["x"]) == ("", False)


def test_system_specs_and_set_names(tmp_path: Path) -> None:
    specs = parse_systems("mini-ultravox,mini-cascade,oracle")
    assert [s.name for s in specs] == ["mini-ultravox", "mini-cascade", "oracle"]
    specs = parse_systems("tiny-ultravox,endpoint:http://127.0.0.1:9/v1,model=m,key_env=K,raw_prompts=1,"
                          "tiny-llama,name=text")
    assert [s.name for s in specs] == ["tiny-ultravox", "endpoint-m", "text"]
    assert specs[1].spec == "endpoint:http://127.0.0.1:9/v1,model=m,key_env=K,raw_prompts=1"
    assert specs[1].load().config()["api_key_env"] == "K"
    assert parse_systems("ultravox:/ckpt/uv-0.6,audio=/a,name=uv")[0].spec == "ultravox:/ckpt/uv-0.6,audio=/a"
    with pytest.raises(InterpError, match="unknown system 'nope'"):
        parse_systems("oracle,nope")
    with pytest.raises(InterpError, match="two systems"):
        parse_systems("oracle,oracle")
    with pytest.raises(InterpError, match="model=NAME"):
        parse_systems("endpoint:http://x/v1")
    assert set_name(tmp_path / "sentiment") == "sentiment"
    assert set_name(tmp_path / "sentiment-noise" / "snr-5") == "sentiment-noise-snr-5"


@pytest.mark.parametrize("args, message", [
    (("behave", "--systems", "tiny-ultravox,no-such-model", "--data", "SET", "--out", "RUN"), "no-such-model"),
    (("behave", "--systems", "tiny-ultravox", "--data", "MISSING", "--out", "RUN"), "folder not found"),
    (("stats", "MISSING"), "run folder not found"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    spoken = make_set(tmp_path / "sent", sentiment_records(2))
    replace = {"SET": str(spoken.root), "RUN": str(tmp_path / "run"), "MISSING": str(tmp_path / "missing")}
    result = run_cli(*(replace.get(arg, arg) for arg in args))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "tiny-ultravox").exists()


@pytest.mark.parametrize("args, message", [
    (("behave", "--systems", "tiny-ultravox", "--data", "EMPTY_CHOICE", "--out", "RUN"), "choice is empty"),
    (("behave", "--systems", "tiny-llama", "--data", "EMPTY_CHOICE", "--out", "RUN", "--prompts", "few-shot"),
     "choice is empty"),
    (("behave", "--systems", "tiny-ultravox", "--data", "SET", "--out", "RUN", "--prompts", "zero-shot"),
     "unknown prompt style 'zero-shot'"),
    (("behave", "--systems", "tiny-ultravox", "--data", "SET", "--out", "RUN", "--calibrate", "mean"),
     "unknown calibration 'mean'"),
    (("extract", "--model", "tiny-ultravox", "--data", "SET", "--out", "RUN", "--sites", "llm.layers.0",
      "--prompt", "What is the sentiment?"), "exactly one <|audio|> placeholder"),
])
def test_unscorable_prompt_or_choice_is_one_line_and_writes_nothing(tmp_path: Path, args: tuple[str, ...],
                                                                    message: str) -> None:
    """A choice that tokenises to nothing, an unknown style or calibration, a prompt without its audio slot:
    one line, exit 2, and no run or cache folder is created."""
    spoken = make_set(tmp_path / "sent", sentiment_records(2))
    records = sentiment_records(2)
    records[0]["choices"] = ["negative", " "]
    empty = make_set(tmp_path / "empty", records)
    replace = {"SET": str(spoken.root), "EMPTY_CHOICE": str(empty.root), "RUN": str(tmp_path / "run")}
    result = run_cli(*(replace.get(arg, arg) for arg in args))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# --- interp stats on a hand-made run -----------------------------------------------------------------------------

_SYSTEMS = ["e2e", "cascade", "oracle"]
_SNRS = [None, 10.0, 0.0]


def _write_file(run: Path, system: str, name: str, lines: list[dict], status: str = "done") -> None:
    folder = run / system
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / f"{name}.json").write_text(json.dumps({"status": status}))


@pytest.fixture()
def hand_run(tmp_path: Path) -> tuple[Path, dict]:
    """3 systems; a 4-way topic set at clean / 10 dB / 0 dB, a binary set, an open set, an unfinished file."""
    rng = np.random.default_rng(7)
    run, truth = tmp_path / "run", {}
    n = 120
    gold = rng.integers(0, 4, n)
    for snr, keep in zip(_SNRS, (0.85, 0.7, 0.45)):
        name = "topic" if snr is None else f"topic-noise-snr{snr:g}"
        base = np.where(rng.random(n) < keep, gold, rng.integers(0, 4, n))
        for index, system in enumerate(_SYSTEMS):
            noise = 0.1 if system == "cascade" else (0.3 if system == "e2e" else 0.2)
            pred = np.where(rng.random(n) < noise, rng.integers(0, 4, n), base if system != "oracle" else gold)
            lines = []
            for i in range(n):
                suffix = "" if snr is None else f".snr{snr:g}"
                line = {"id": f"topic-{i:03d}{suffix}", "task": "topic", "snr_db": snr, "label": int(gold[i]),
                        "n_choices": 4, "prediction": int(pred[i]), "correct": bool(pred[i] == gold[i])}
                if snr == 10.0:  # the 0 dB lines have no parent_id: the id's suffix must do
                    line["parent_id"] = f"topic-{i:03d}"
                lines.append(line)
            _write_file(run, system, name, lines)
            truth[name, system] = pred
    truth["gold"] = gold
    binary = rng.integers(0, 2, 50)
    for system in _SYSTEMS:
        pred = np.where(rng.random(50) < 0.3, 1 - binary, binary)
        _write_file(run, system, "sst2", [{"id": f"s{i}", "task": "sst2", "snr_db": None, "label": int(binary[i]),
                                           "n_choices": 2, "prediction": int(pred[i]),
                                           "correct": bool(pred[i] == binary[i])} for i in range(50)])
        truth["sst2", system] = pred
        _write_file(run, system, "trivia", [{"id": f"t{i}", "task": "triviaqa", "snr_db": None, "label": ["x"],
                                             "n_choices": 0, "prediction": "x" if i % (2 + len(system) % 3) else "y",
                                             "correct": bool(i % (2 + len(system) % 3))} for i in range(30)])
    truth["sst2", "gold"] = binary
    _write_file(run, "e2e", "unfinished", [{"id": "u0"}], status="running")
    (run / "run.json").write_text(json.dumps({"systems": _SYSTEMS}))
    return run, truth


def test_stats_match_references(hand_run) -> None:
    run, truth = hand_run
    result = run_cli("stats", run, "--n-boot", "200")
    assert result.returncode == 0, result.stderr
    assert "unfinished" in result.stderr
    stats = json.loads((run / "stats.json").read_text())
    assert stats["systems"] == _SYSTEMS and stats["skipped"] == [str(Path("e2e") / "unfinished.jsonl")]
    assert stats["provenance"]["command"] == "interp stats" and stats["n_boot"] == 200
    assert set(stats["sets"]) == {"topic", "topic-noise-snr10", "topic-noise-snr0", "sst2", "trivia"}
    for name in ("topic", "topic-noise-snr10", "topic-noise-snr0", "sst2"):
        entry = stats["sets"][name]
        gold = truth["sst2", "gold"] if name == "sst2" else truth["gold"]
        for system in _SYSTEMS:
            estimate = entry["accuracy"][system]
            assert estimate["value"] == pytest.approx(np.mean(truth[name, system] == gold), abs=1e-12)
            assert estimate["low"] <= estimate["value"] <= estimate["high"]
        assert [(k["a"], k["b"]) for k in entry["kappa"]] == [("e2e", "cascade"), ("e2e", "oracle"),
                                                               ("cascade", "oracle")]
        for pair in entry["kappa"]:
            expected = cohen_kappa_score(truth[name, pair["a"]], truth[name, pair["b"]])
            assert pair["value"] == pytest.approx(expected, abs=1e-12)
            assert pair["low"] <= pair["value"] <= pair["high"]
        if name == "sst2":
            assert entry["error_overlap"] == []  # binary: both wrong means the same answer
        else:
            for overlap in entry["error_overlap"]:
                a, b = truth[name, overlap["a"]], truth[name, overlap["b"]]
                both = (a != gold) & (b != gold)
                assert overlap["n_both_wrong"] == both.sum() and overlap["chance"] == pytest.approx(1 / 3)
                assert both.sum() > 0
                assert overlap["value"] == pytest.approx(np.mean(a[both] == b[both]), abs=1e-12)
    trivia = stats["sets"]["trivia"]
    assert trivia["open"] and trivia["kappa"] == [] and len(trivia["mcnemar"]) == 3
    tests = [t for entry in stats["sets"].values() for t in entry["mcnemar"]]
    assert len(tests) == stats["fdr"]["m"] == 15
    expected_q = multipletests([t["p_value"] for t in tests], method="fdr_bh")[1]
    np.testing.assert_allclose([t["q_value"] for t in tests], expected_q, rtol=0, atol=1e-12)

    table = stats["snr"]["topic"]
    assert set(table["sets"]) == {"topic", "topic-noise-snr10", "topic-noise-snr0"} and list(stats["snr"]) == ["topic"]
    assert [(row["snr_db"], row["system"]) for row in table["rows"]] == [
        (snr, system) for snr in _SNRS for system in _SYSTEMS]
    for row in table["rows"]:
        name = "topic" if row["snr_db"] is None else f"topic-noise-snr{row['snr_db']:g}"
        assert row["accuracy"] == pytest.approx(np.mean(truth[name, row["system"]] == truth["gold"]), abs=1e-12)
        assert row["n"] == 120
    for figure in ("kappa_heatmap.html", "error_overlap.html", "accuracy_vs_snr.html"):
        html = (run / figure).read_text(encoding="utf-8")
        assert "<script src=" not in html.replace("<script src=\"data:", "") and len(html) > 1_000_000
    assert "topic" in result.stdout and "κ" in result.stdout


def test_stats_in_process_is_seeded(hand_run) -> None:
    run, _ = hand_run
    first = run_statistics(run, n_boot=100, seed=3)
    second = run_statistics(run, n_boot=100, seed=3)
    first.pop("provenance"), second.pop("provenance")
    assert first == second
    assert os.path.basename(run) == "run"


def test_behave_output_feeds_stats(tmp_path: Path, ultravox, oracle) -> None:
    """Predictions written by run_system for a clean set and its noisy variant give kappa and an SNR table."""
    clean = sentiment_records(4)
    noisy = [{**record, "id": f"{record['id']}.snr10", "audio": f"audio/{record['id']}.snr10.wav",
              "speech": {**record["speech"], "noise": {"kind": "babble-recording", "snr_db": 10.0, "seed": 0,
                                                       "parent_id": record["id"], "gain": 1.0}}} for record in clean]
    sets = [make_set(tmp_path / "sent", clean), make_set(tmp_path / "sent-noise" / "snr10", noisy, seed=1)]
    for name, system in (("uv", ultravox), ("oracle", oracle)):
        for spoken in sets:
            run_system(system, spoken, tmp_path / "run", system_name=name)
    lines = _lines(tmp_path / "run" / "uv" / "sent-noise-snr10.jsonl")
    assert {line["snr_db"] for line in lines} == {10.0} and lines[0]["parent_id"] == "sentiment-000"
    stats = run_statistics(tmp_path / "run", n_boot=50)
    assert set(stats["sets"]) == {"sent", "sent-noise-snr10"}
    assert stats["sets"]["sent"]["kappa"][0]["n"] == 4 and stats["sets"]["sent-noise-snr10"]["snr_db"] == 10.0
    table = stats["snr"]["sent"]
    assert table["sets"] == ["sent", "sent-noise-snr10"]
    assert [row["snr_db"] for row in table["rows"]] == [None, None, 10.0, 10.0]


def _minimal(item_id: str) -> str:
    """A predictions line with only the fields `interp stats` reads (as a hand-written file has them)."""
    return json.dumps({"id": item_id, "task": "t", "label": 0, "n_choices": 2, "prediction": 0, "correct": True})


def test_read_predictions_keeps_whole_lines_and_drops_torn_ones(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    a, b = _minimal("a"), _minimal("b")
    path.write_text(f"{a}\n{b}")  # a whole last line without its newline is kept
    assert [r.id for r in read_predictions(path, repair=True)] == ["a", "b"]
    assert path.read_text().endswith("}\n")
    path.write_text(f'{a}\n{b[:-10]}')  # a torn one is dropped, and cut with repair
    assert [r.id for r in read_predictions(path)] == ["a"] and path.read_text().endswith(b[-20:-10])
    assert [r.id for r in read_predictions(path, repair=True)] == ["a"] and path.read_text() == f"{a}\n"
    path.write_text(f'{a}\nnot json\n{_minimal("c")}\n')
    with pytest.raises(InterpError, match=":2: not valid JSON"):
        read_predictions(path)


def test_prediction_lines_round_trip_and_bad_fields_are_named(tmp_path: Path, oracle) -> None:
    """Every line the harness writes (scores, parsed choices, open answers, WER, a cascade's transcript) reads
    back into a Prediction that writes the same line; a line missing or adding a field is refused by name."""
    spoken = make_set(tmp_path / "s", sentiment_records(3))
    paths = [run_system(Cascade(_CountingASR(), oracle.llm, name="c"), spoken, tmp_path / "run", system_name="c"),
             run_system(Scripted(["negative", "Positive!", "dunno"]), spoken, tmp_path / "run", system_name="p")]
    records = [_item(0, "transcribe", "the cup final", (), ["the cup final"], 0.3),
               _item(0, "triviaqa", "capital of france ?", (), ["Paris"], 0.3)]
    paths.append(run_system(Scripted(["the cup", "Paris"]), make_set(tmp_path / "o", records), tmp_path / "run",
                            system_name="o"))
    keys = set()
    for path in paths:
        for text in path.read_text(encoding="utf-8").splitlines():
            line = Prediction.from_dict(json.loads(text))
            assert json.dumps(line.to_dict(), ensure_ascii=False) == text
            keys |= set(json.loads(text))
    assert {"asr_transcript", "reply", "wer", "ref_words", "scores"} <= keys  # every optional field was written
    assert read_predictions(paths[1])[2].prediction == -1 and read_predictions(paths[0])[0].scores is not None
    with pytest.raises(InterpError, match="no correct"):
        Prediction.from_dict({"id": "a", "task": "t", "label": 0, "n_choices": 2, "prediction": 0})
    path = tmp_path / "extra.jsonl"
    path.write_text(_minimal("a") + "\n" + _minimal("b")[:-1] + ', "confidence": 0.9}\n')
    with pytest.raises(InterpError, match=r"extra.jsonl:2: not a predictions line: unknown field 'confidence'"):
        read_predictions(path)
