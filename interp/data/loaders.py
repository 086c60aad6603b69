"""Importers: the study's benchmark files (and LibriSpeech folders) as `TextItem`s.

Each reads the file format described in interp/resources/SOURCES.md, checks every row, and raises
DataError naming the file and row that are wrong. Texts are cleaned only as far as a speaker would
read them (SST-2's tokenisation undone, AG News's HTML escapes decoded); the source keeps the id.
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interp.data.manifest import Source
from interp.data.text_items import TextItem
from interp.errors import DataError

__all__ = ["IMPORTERS", "DEFAULT_SOURCES", "import_items", "AG_NEWS_MAX_WORDS"]

AG_NEWS_MAX_WORDS = 60
"""AG News title + description is cut at the last sentence end within this many words (about 20 s of
speech, well inside Whisper's 30 s window); a text with no sentence end there is cut at the word."""

_AG_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
_MELD_EMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _error(path: Path, row: int | str, message: str) -> DataError:
    return DataError(f"{path}: row {row}: {message}")


def _detokenize_sst2(text: str) -> str:
    """Undo the PTB tokenisation of GLUE SST-2 ("it 's a film , n't" → "it's a film, n't")."""
    text = text.replace("-lrb-", "(").replace("-rrb-", ")").replace("`` ", '"').replace(" ''", '"')
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    text = re.sub(r" ([.,;:!?%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:]


def load_sst2(path: Path) -> list[TextItem]:
    """GLUE SST-2 dev.tsv: `sentence<TAB>label`, header, no quoting; label 0 negative, 1 positive."""
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header != ["sentence", "label"]:
            raise _error(path, 1, f"expected the header 'sentence<TAB>label', found {header!r}")
        for number, row in enumerate(rows, start=2):
            if len(row) != 2 or row[1] not in ("0", "1"):
                raise _error(path, number, f"expected a sentence and a 0/1 label, found {row!r}")
            items.append(TextItem(
                id=f"sst2-dev-{number - 2:05d}", task="sst2", transcript=_detokenize_sst2(row[0]),
                choices=("negative", "positive"), label=int(row[1]),
                source=Source("sst2", "dev", str(number - 2))))
    return items


def _clean_ag_news(text: str) -> str:
    text = text.replace("\\", " ")
    text = re.sub(r"&lt;.*?&gt;", " ", text)  # ticker symbols and stray tags: <TXN.N>, <b>
    text = re.sub(r" ?#(\d+);", lambda m: html.unescape(f"&#{m.group(1)};"), text)
    text = text.replace("#151;", " - ").replace("quot;", '"')
    text = html.unescape(text)
    return re.sub(r"\s+", " ", text).strip()


def _truncate_words(text: str, max_words: int) -> tuple[str, bool]:
    words = text.split(" ")
    if len(words) <= max_words:
        return text, False
    head = " ".join(words[:max_words])
    cut = max(head.rfind(". "), head.rfind("? "), head.rfind("! "))
    return (head[: cut + 1] if cut > len(head) // 3 else head), True


def load_ag_news(path: Path) -> list[TextItem]:
    """ag_news_csv test.csv: `class (1–4), title, description`, all quoted, no header."""
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 3 or row[0] not in ("1", "2", "3", "4"):
                raise _error(path, number, f"expected class 1-4, title, description; found {row[:3]!r}")
            title, description = _clean_ag_news(row[1]), _clean_ag_news(row[2])
            separator = " " if title.endswith((".", "?", "!")) else ". "
            text, truncated = _truncate_words(title + separator + description, AG_NEWS_MAX_WORDS)
            note = f"title + description, cut to {AG_NEWS_MAX_WORDS} words" if truncated else "title + description"
            items.append(TextItem(
                id=f"ag_news-test-{number - 1:05d}", task="ag_news", transcript=text, choices=_AG_CLASSES,
                label=int(row[0]) - 1, source=Source("ag_news", "test", str(number - 1), note)))
    return items


def _csqa_fields(record: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """Question, choice labels and texts from the flat HF export or the original nested format."""
    question = record["question"]
    if isinstance(question, dict):  # original: {"question": {"stem", "choices": [{"label", "text"}]}}
        choices = question["choices"]
        return question["stem"], [c["label"] for c in choices], [c["text"] for c in choices]
    return question, list(record["choices"]["label"]), list(record["choices"]["text"])


def load_csqa(path: Path) -> list[TextItem]:
    """CommonsenseQA JSONL: the question is spoken; the five choices go to the model as text."""
    items = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                question, labels, texts = _csqa_fields(record)
                label = labels.index(record["answerKey"])
                original_id = record["id"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise _error(path, number, f"not a CommonsenseQA record ({type(error).__name__}: {error})") from error
            items.append(TextItem(
                id=f"csqa-dev-{number - 1:05d}", task="csqa", transcript=question.strip(), choices=tuple(texts),
                label=label, source=Source("commonsenseqa", "dev", original_id)))
    return items


def load_triviaqa(path: Path) -> list[TextItem]:
    """TriviaQA subset JSON array of {qid, question, gold_answer, aliases}: an open task."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of questions")
    items = []
    for number, record in enumerate(records):
        try:
            question = record["question"].replace('""', '"').strip()
            answers = [record["gold_answer"]] + [a for a in record["aliases"] if a != record["gold_answer"]]
            items.append(TextItem(
                id=f"triviaqa-{number:05d}", task="triviaqa", transcript=question, choices=(),
                label=tuple(answers), source=Source("triviaqa", "validation", record["qid"])))
        except (KeyError, TypeError, AttributeError) as error:
            raise _error(path, number, f"expected qid, question, gold_answer, aliases ({error})") from error
    return items


def _find_recording(audio_dir: Path | None, stem: str) -> Path | None:
    if audio_dir is None:
        return None
    for suffix in _AUDIO_SUFFIXES:
        candidate = audio_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_meld(path: Path, audio_dir: Path | None = None) -> list[TextItem]:
    """MELD *_sent_emo.csv: utterance and emotion (7 classes); natural clip `dia{D}_utt{U}.wav` when given."""
    split = path.name.split("_")[0]
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle)
        for number, row in enumerate(rows, start=2):
            try:
                emotion, utterance = row["Emotion"], row["Utterance"].strip()
                dialogue, turn = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except (KeyError, TypeError, ValueError) as error:
                raise _error(path, number, "expected MELD columns Utterance, Emotion, Dialogue_ID, "
                             f"Utterance_ID ({error})") from error
            if emotion not in _MELD_EMOTIONS:
                raise _error(path, number, f"unknown emotion {emotion!r}; MELD has {', '.join(_MELD_EMOTIONS)}")
            stem = f"dia{dialogue}_utt{turn}"
            items.append(TextItem(
                id=f"meld-{split}-{stem}", task="meld", transcript=utterance, choices=_MELD_EMOTIONS,
                label=_MELD_EMOTIONS.index(emotion), source=Source("meld", split, stem),
                recording=_find_recording(audio_dir, stem)))
    return items


def load_mustard(path: Path, audio_dir: Path | None = None) -> list[TextItem]:
    """MUStARD sarcasm_data.json: {id: {utterance, sarcasm, ...}}; natural clip `{id}.wav` when given."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    items = []
    for key, record in records.items():
        if not isinstance(record, dict) or not isinstance(record.get("sarcasm"), bool) or "utterance" not in record:
            raise _error(path, key, "expected an object with 'utterance' and a boolean 'sarcasm'")
        items.append(TextItem(
            id=f"mustard-{key}", task="mustard", transcript=record["utterance"].strip(),
            choices=("not sarcastic", "sarcastic"), label=int(record["sarcasm"]),
            source=Source("mustard", "all", key, note=f"show {record.get('show')}"),
            recording=_find_recording(audio_dir, key)))
    return items


def load_librispeech(folder: Path) -> list[TextItem]:
    """LibriSpeech folder(s): every `*.trans.txt` line `<utterance-id> <TEXT>` with its `<id>.flac` beside it."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected LibriSpeech *.trans.txt and *.flac files)")
    items = []
    for transcript_file in sorted(folder.rglob("*.trans.txt")):
        for number, line in enumerate(transcript_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            recording = transcript_file.parent / f"{utterance_id}.flac"
            if not text or not recording.is_file():
                raise _error(transcript_file, number, f"expected '<id> <TEXT>' with {recording.name} beside it")
            items.append(TextItem(
                id=f"librispeech-{utterance_id}", task="transcribe", transcript=text, choices=(), label=(text,),
                source=Source("librispeech", "test-clean", utterance_id), recording=recording))
    if not items:
        raise DataError(f"{folder}: no LibriSpeech *.trans.txt files found")
    return items


IMPORTERS: dict[str, Callable[..., list[TextItem]]] = {
    "sst2": load_sst2, "ag_news": load_ag_news, "csqa": load_csqa, "triviaqa": load_triviaqa,
    "meld": load_meld, "mustard": load_mustard, "librispeech": load_librispeech,
}
DEFAULT_SOURCES: dict[str, str] = {
    "sst2": "sst2/dev.tsv", "ag_news": "ag_news/test.csv", "csqa": "commonsenseqa/dev_rand_split.jsonl",
    "triviaqa": "triviaqa/triviaqa.json", "meld": "meld/dev_sent_emo.csv", "mustard": "mustard/sarcasm_data.json",
    "librispeech": "speech/librispeech",
}
"""The packaged copy each importer reads when no source path is given (interp/resources/)."""


def import_items(dataset: str, source: Path, *, audio_dir: Path | None = None) -> list[TextItem]:
    """Read one benchmark file into TextItems; raises DataError for an unknown dataset or bad file."""
    if dataset not in IMPORTERS:
        raise DataError(f"unknown dataset {dataset!r}; importers: {', '.join(IMPORTERS)}")
    if not source.exists():
        raise DataError(f"{source}: file not found")
    if audio_dir is not None and not audio_dir.is_dir():
        raise DataError(f"--audio-dir {audio_dir}: not a folder")
    if dataset in ("meld", "mustard"):
        items = IMPORTERS[dataset](source, audio_dir)
    elif audio_dir is not None:
        raise DataError(f"--audio-dir applies to meld and mustard only, not {dataset}")
    else:
        items = IMPORTERS[dataset](source)
    if not items:
        raise DataError(f"{source}: no items")
    empty = [item.id for item in items if not item.transcript]
    if empty:
        raise DataError(f"{source}: {len(empty)} item(s) with an empty transcript, e.g. {empty[0]}")
    return items
