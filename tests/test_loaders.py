"""Importers on the real benchmark files shipped in interp/resources (counts from SOURCES.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from interp.data.loaders import DEFAULT_SOURCES, import_items
from interp.data.text_items import select_stratified
from interp.errors import DataError
from interp.resources import resource_path


def _items(dataset: str, relative: str | None = None):
    return import_items(dataset, resource_path(relative or DEFAULT_SOURCES[dataset]))


def _label_counts(items) -> dict[str, int]:
    return dict(Counter(item.answer for item in items))


def test_sst2_dev_has_872_items_428_negative_444_positive() -> None:
    items = _items("sst2")
    assert len(items) == 872
    assert _label_counts(items) == {"negative": 428, "positive": 444}
    assert items[0].transcript == "It's a charming and often affecting journey."


def test_ag_news_test_has_7600_items_1900_per_class() -> None:
    items = _items("ag_news")
    assert len(items) == 7600
    assert _label_counts(items) == {"World": 1900, "Sports": 1900, "Business": 1900, "Sci/Tech": 1900}
    assert all(len(item.transcript.split()) <= 60 for item in items)
    assert not any("#39;" in item.transcript or "&lt;" in item.transcript for item in items)


def test_csqa_dev_has_1221_items_with_five_choices() -> None:
    items = _items("csqa")
    assert len(items) == 1221
    assert Counter(item.label for item in items) == {0: 239, 1: 255, 2: 241, 3: 251, 4: 235}
    assert {len(item.choices) for item in items} == {5}


def test_csqa_original_nested_format_is_accepted(tmp_path: Path) -> None:
    """The original CommonsenseQA layout gives the same items as the flat export."""
    flat = resource_path("commonsenseqa/dev_rand_split.jsonl").read_text().splitlines()[:3]
    nested = []
    for line in flat:
        record = json.loads(line)
        nested.append(json.dumps({"answerKey": record["answerKey"], "id": record["id"], "question": {
            "question_concept": record["question_concept"], "stem": record["question"],
            "choices": [{"label": label, "text": t}
                        for label, t in zip(record["choices"]["label"], record["choices"]["text"])]}}))
    path = tmp_path / "dev_nested.jsonl"
    path.write_text("\n".join(nested) + "\n")
    assert import_items("csqa", path) == _items("csqa")[:3]


def test_triviaqa_has_150_open_questions_with_gold_answer_first() -> None:
    items = _items("triviaqa")
    assert len(items) == 150
    assert all(item.is_open and item.label for item in items)
    assert items[0].answer == "Tequila" and "Tequilla" in items[0].label


def test_meld_dev_and_test_emotion_counts() -> None:
    dev = _items("meld", "meld/dev_sent_emo.csv")
    assert len(dev) == 1109
    assert _label_counts(dev) == {"neutral": 470, "joy": 163, "anger": 153, "surprise": 150, "sadness": 111,
                                  "fear": 40, "disgust": 22}
    test = _items("meld", "meld/test_sent_emo.csv")  # CRLF line endings
    assert len(test) == 2610
    assert _label_counts(test) == {"neutral": 1256, "joy": 402, "anger": 345, "surprise": 281, "sadness": 208,
                                   "disgust": 68, "fear": 50}
    assert test[0].id == "meld-test-dia0_utt0" and not test[0].transcript.endswith("\r")


def test_mustard_has_690_items_345_sarcastic() -> None:
    items = _items("mustard")
    assert len(items) == 690
    assert _label_counts(items) == {"sarcastic": 345, "not sarcastic": 345}


def test_meld_finds_natural_clips_in_audio_dir(tmp_path: Path) -> None:
    """A clip named dia{D}_utt{U}.wav in --audio-dir is attached to its item; others have none."""
    (tmp_path / "dia0_utt1.wav").write_bytes(b"")
    items = import_items("meld", resource_path("meld/dev_sent_emo.csv"), audio_dir=tmp_path)
    assert [i.id for i in items if i.recording] == ["meld-dev-dia0_utt1"]


def test_librispeech_folder_has_4_utterances_with_recordings() -> None:
    items = _items("librispeech")
    assert len(items) == 4
    assert all(item.recording is not None and item.recording.suffix == ".flac" for item in items)
    assert items[0].transcript.startswith("HE HOPED THERE WOULD BE STEW")


@pytest.mark.parametrize(("dataset", "content", "message"), [
    ("sst2", "sentence\tlabel\ngood film \t1\nbad film \t7\n", "row 3"),
    ("sst2", "text,label\n", "header"),
    ("ag_news", '"5","t","d"\n', "class 1-4"),
    ("csqa", '{"id": "x", "question": "q?"}\n', "not a CommonsenseQA record"),
    ("triviaqa", '[{"qid": "q"}]', "expected qid, question"),
    ("mustard", '{"1": {"utterance": "hi", "sarcasm": "yes"}}', "boolean 'sarcasm'"),
    ("meld", "Sr No.,Utterance,Emotion,Dialogue_ID,Utterance_ID\n1,hi,bored,0,0\n", "unknown emotion 'bored'"),
])
def test_malformed_rows_name_file_and_row(tmp_path: Path, dataset: str, content: str, message: str) -> None:
    path = tmp_path / "source.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        import_items(dataset, path)


def test_stratified_limit_balances_labels_and_is_seeded() -> None:
    """--limit 200 on SST-2 gives 100/100; the same seed gives the same items, another seed others."""
    items = _items("sst2")
    chosen = select_stratified(items, limit=200, seed=0)
    assert _label_counts(chosen) == {"negative": 100, "positive": 100}
    assert chosen == select_stratified(items, limit=200, seed=0)
    assert chosen != select_stratified(items, limit=200, seed=1)


def test_stratified_limit_gives_small_classes_all_they_have() -> None:
    """MELD dev with 210 items over 7 emotions: disgust (22) is taken whole, the rest share the remainder."""
    chosen = select_stratified(_items("meld", "meld/dev_sent_emo.csv"), limit=210, seed=0)
    counts = _label_counts(chosen)
    assert len(chosen) == 210 and counts["disgust"] == 22
    assert max(counts.values()) - min(v for k, v in counts.items() if k != "disgust") <= 1
