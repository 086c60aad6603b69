"""Item records and set validation: what a hand-made manifest can get wrong is caught where it enters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from interp.data.manifest import Item, SpokenSet
from interp.errors import DataError
from tests.helpers import run_cli


def _record(item_id: str = "a-1", **changes: object) -> dict:
    record = {
        "id": item_id, "task": "sentiment", "audio": f"audio/{item_id}.wav", "sample_rate": 16000,
        "duration": 0.5, "transcript": "It was great.", "choices": ["negative", "positive"], "label": 1,
        "source": {"dataset": "builtin", "split": "x", "original_id": "1"},
        "speech": {"kind": "tts", "engine": "espeak", "voice": "en-us", "params": {"pitch": 50}},
        "words": [{"text": "It", "t_start": 0.0, "t_end": 0.1}],
    }
    record.update(changes)
    return record


def _hand_made_set(root: Path, records: list[dict], *, rate: int = 16000) -> Path:
    (root / "audio").mkdir(parents=True)
    for record in records:
        samples = np.zeros(int(record["duration"] * rate), dtype=np.float32)
        sf.write(root / record["audio"], samples, rate, subtype="PCM_16")
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_item_round_trips_through_dict() -> None:
    """to_dict/from_dict keep every field, forced-choice and open labels alike."""
    item = Item.from_dict(_record())
    assert Item.from_dict(item.to_dict()) == item
    open_item = Item.from_dict(_record(choices=[], label=["Tequila", "Tequilla"]))
    assert open_item.is_open and open_item.answer == "Tequila"
    assert Item.from_dict(open_item.to_dict()) == open_item


@pytest.mark.parametrize(("changes", "message"), [
    ({"transcript": "  "}, "empty transcript"),
    ({"label": 2}, "not an index into 2 choices"),
    ({"sample_rate": 8000}, "expected 16000"),
    ({"id": "../evil"}, "must be letters"),
    ({"choices": [], "label": 0}, "open task"),
    ({"words": [{"text": "x", "t_start": 0.4, "t_end": 0.9}]}, "outside the audio"),
])
def test_invalid_record_is_refused(changes: dict, message: str) -> None:
    """Each broken invariant raises DataError naming it."""
    with pytest.raises(DataError, match=message):
        Item.from_dict(_record(**changes))


def test_missing_field_is_named() -> None:
    """A record without 'transcript' says which field is missing."""
    record = _record()
    del record["transcript"]
    with pytest.raises(DataError, match="missing field 'transcript'"):
        Item.from_dict(record)


def test_valid_set_opens(tmp_path: Path) -> None:
    """A correct hand-made set loads with its items in order."""
    spoken = SpokenSet.open(_hand_made_set(tmp_path / "s", [_record("a-1"), _record("a-2")]))
    assert [i.id for i in spoken.items] == ["a-1", "a-2"]
    assert spoken.load_audio(spoken.items[0]).shape == (8000,)


def test_set_with_8khz_wav_is_refused(tmp_path: Path) -> None:
    """An 8 kHz wav behind a manifest that claims 16 kHz is caught from the file header."""
    root = _hand_made_set(tmp_path / "s", [_record()], rate=8000)
    with pytest.raises(DataError, match="8000 Hz with 1 channel"):
        SpokenSet.open(root)


@pytest.mark.parametrize(("records", "message"), [
    ([_record("a-1"), _record("a-1")], "duplicate id 'a-1'"),
    ([_record(transcript="")], "empty transcript"),
    ([_record(duration=0.7)], None),
])
def test_info_reports_bad_sets_in_one_line(tmp_path: Path, records: list[dict], message: str | None) -> None:
    """`interp data info` on a broken set: one line on stderr, exit 2, no traceback."""
    root = _hand_made_set(tmp_path / "s", records)
    if message is None:  # manifest duration disagrees with the wav
        manifest = root / "manifest.jsonl"
        manifest.write_text(manifest.read_text().replace('"duration": 0.7', '"duration": 0.9'))
        message = "manifest says 0.900 s"
    result = run_cli("data", "info", root)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_info_reports_8khz_wav_in_one_line(tmp_path: Path) -> None:
    """The 8 kHz case through the CLI: one line naming the rate and the fix."""
    root = _hand_made_set(tmp_path / "s", [_record()], rate=8000)
    result = run_cli("data", "info", root)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "8000 Hz" in result.stderr and "16000 Hz mono" in result.stderr


def test_info_reports_malformed_json_line(tmp_path: Path) -> None:
    """A torn manifest line is reported with its line number."""
    root = _hand_made_set(tmp_path / "s", [_record()])
    with (root / "manifest.jsonl").open("a") as manifest:
        manifest.write('{"id": "a-2", "task"\n')
    result = run_cli("data", "info", root)
    assert result.returncode == 2 and "manifest.jsonl:2: not valid JSON" in result.stderr


def test_info_summarises_a_set(tmp_path: Path) -> None:
    """The summary counts labels and sources of the set it read."""
    root = _hand_made_set(tmp_path / "s", [_record("a-1"), _record("a-2", label=0), _record("a-3")])
    result = run_cli("data", "info", root, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["labels"] == {"negative": 1, "positive": 2}
    assert summary["items"] == 3 and summary["sources"] == {"builtin/x": 3}
    assert summary["duration_total"] == pytest.approx(1.5)


def test_missing_set_folder_is_one_line(tmp_path: Path) -> None:
    """A path that does not exist: one line, exit 2."""
    result = run_cli("data", "info", tmp_path / "nope")
    assert result.returncode == 2 and "folder not found" in result.stderr and result.stderr.count("\n") == 1


def test_copy_of_a_set_opens_elsewhere(tmp_path: Path) -> None:
    """Audio paths are relative: a moved set still opens."""
    root = _hand_made_set(tmp_path / "s", [_record()])
    moved = Path(shutil.copytree(root, tmp_path / "moved"))
    assert SpokenSet.open(moved).audio_path(SpokenSet.open(moved).items[0]).parent == moved / "audio"
