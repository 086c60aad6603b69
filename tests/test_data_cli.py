"""`interp data import` end to end, bad input through the CLI, and resuming an interrupted set."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from interp.data.manifest import SpokenSet
from interp.data.spoken import write_spoken_set
from interp.data.tasks import synthesize_suite
from interp.resources import resource_path
from tests.helpers import run_cli


def _assert_16khz_mono(spoken: SpokenSet) -> None:
    for item in spoken.items:
        info = sf.info(spoken.audio_path(item))
        assert (info.samplerate, info.channels) == (16000, 1)


@pytest.mark.slow
def test_sst2_limit_200_seed_0_gives_100_per_label_spoken_by_piper(tmp_path: Path) -> None:
    """The acceptance command, on the shipped copy of SST-2 dev, with piper (the default engine)."""
    out = tmp_path / "sst2"
    result = run_cli("data", "import", "sst2", resource_path("sst2/dev.tsv"), "--tts", "--limit", "200",
                     "--seed", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    spoken = SpokenSet.open(out)
    assert Counter(item.answer for item in spoken.items) == {"negative": 100, "positive": 100}
    assert {item.speech.engine for item in spoken.items} == {"piper"}
    assert sum(1 for item in spoken.items if item.words) == 200
    _assert_16khz_mono(spoken)
    assert "labels: negative 100, positive 100" in result.stdout


@pytest.mark.slow
def test_sst2_full_import_gives_872_items(tmp_path: Path) -> None:
    """All 872 SST-2 dev sentences become 16 kHz items (espeak here, to keep CI short)."""
    result = run_cli("data", "import", "sst2", "--tts", "--engine", "espeak", "--out", tmp_path / "sst2")
    assert result.returncode == 0, result.stderr
    spoken = SpokenSet.open(tmp_path / "sst2")
    assert len(spoken) == 872
    _assert_16khz_mono(spoken)


def test_librispeech_import_keeps_the_real_recordings(tmp_path: Path) -> None:
    """4 natural utterances, same length as the source FLACs, transcripts from trans.txt."""
    result = run_cli("data", "import", "librispeech", "--out", tmp_path / "ls")
    assert result.returncode == 0, result.stderr
    spoken = SpokenSet.open(tmp_path / "ls")
    assert len(spoken) == 4 and {item.speech.kind for item in spoken.items} == {"natural"}
    source = sf.info(resource_path("speech/librispeech/1089-134686-0000.flac"))
    assert spoken.items[0].duration == pytest.approx(source.duration, abs=1e-3)
    _assert_16khz_mono(spoken)


def test_meld_uses_natural_clip_when_given_and_tts_otherwise(tmp_path: Path) -> None:
    """A 44.1 kHz stereo clip in --audio-dir is resampled and used; the other items fall back to TTS."""
    csv_path = tmp_path / "dev_sent_emo.csv"
    lines = resource_path("meld/dev_sent_emo.csv").read_text(encoding="utf-8").splitlines()
    csv_path.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "dia0_utt1.wav", [[0.1, -0.1]] * 44100, 44100)
    result = run_cli("data", "import", "meld", csv_path, "--audio-dir", clips, "--engine", "espeak",
                     "--out", tmp_path / "meld")
    assert result.returncode == 0, result.stderr
    speech = {item.id: item.speech for item in SpokenSet.open(tmp_path / "meld").items}
    assert speech["meld-dev-dia0_utt1"].kind == "natural" and speech["meld-dev-dia0_utt1"].recording == "dia0_utt1.wav"
    assert {s.engine for k, s in speech.items() if k != "meld-dev-dia0_utt1"} == {"espeak"}
    assert SpokenSet.open(tmp_path / "meld").items[1].duration == pytest.approx(1.0, abs=1e-3)


def test_csqa_and_triviaqa_keep_choices_and_answers(tmp_path: Path) -> None:
    """CommonsenseQA items carry their 5 choices as text; TriviaQA items their aliases."""
    assert run_cli("data", "import", "csqa", "--tts", "--engine", "espeak", "--limit", "5",
                   "--out", tmp_path / "csqa").returncode == 0
    assert {len(item.choices) for item in SpokenSet.open(tmp_path / "csqa").items} == {5}
    assert run_cli("data", "import", "triviaqa", "--tts", "--engine", "espeak", "--limit", "3",
                   "--out", tmp_path / "tqa").returncode == 0
    assert all(item.is_open and len(item.label) >= 1 for item in SpokenSet.open(tmp_path / "tqa").items)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(("args", "message"), [
    (["data", "synth", "colour", "--n", "4"], "unknown task 'colour'"),
    (["data", "import", "sst2", "missing.tsv", "--tts"], "missing.tsv: file not found"),
    (["data", "import", "imdb", "x.tsv", "--tts"], "unknown dataset 'imdb'"),
    (["data", "import", "sst2"], "pass --tts"),
    (["data", "import", "sst2", "--tts", "--engine", "festival"], "unknown TTS engine"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli(*args, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _leftovers(tmp_path) == []


def test_malformed_row_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "dev.tsv"
    source.write_text("sentence\tlabel\nfine \t1\nbroken row without label\n")
    result = run_cli("data", "import", "sst2", source, "--tts", "--out", tmp_path / "out")
    assert result.returncode == 2 and "row 3" in result.stderr and result.stderr.count("\n") == 1
    assert _leftovers(tmp_path) == ["dev.tsv"]


def test_unreadable_recording_mid_way_leaves_no_partial_set(tmp_path: Path) -> None:
    """A corrupt FLAC found while writing: one line, and neither the set nor its partial folder remains."""
    folder = Path(shutil.copytree(resource_path("speech/librispeech"), tmp_path / "ls"))
    (folder / "1089-134691-0001.flac").write_bytes(b"not audio at all")
    result = run_cli("data", "import", "librispeech", folder, "--out", tmp_path / "sets" / "ls")
    assert result.returncode == 2 and "cannot read audio" in result.stderr and result.stderr.count("\n") == 1
    assert _leftovers(tmp_path / "sets") == []


def test_existing_output_needs_overwrite(sentiment_set: Path, tmp_path: Path) -> None:
    """An existing set is never clobbered silently; --overwrite replaces it whole."""
    target = Path(shutil.copytree(sentiment_set, tmp_path / "s"))
    refused = run_cli("data", "synth", "topic", "--n", "4", "--engine", "espeak", "--out", target)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert SpokenSet.open(target).items[0].task == "sentiment"
    replaced = run_cli("data", "synth", "topic", "--n", "4", "--engine", "espeak", "--out", target, "--overwrite")
    assert replaced.returncode == 0 and {i.task for i in SpokenSet.open(target).items} == {"topic"}


def test_resume_after_interruption_gives_identical_set(tmp_path: Path) -> None:
    """Stopping after 3 of 8 items keeps a hidden partial folder; rerunning finishes it, equal to one run."""
    items = synthesize_suite("topic", n=8, seed=5)
    provenance = {"command": "test", "config": {}, "seed": 5}

    def build(out: Path, stop_after: int | None = None) -> None:
        for count, _ in enumerate(write_spoken_set(items, out, engine="piper", seed=5, use_recordings=False,
                                                   provenance=provenance), start=1):
            if count == stop_after:
                break

    build(tmp_path / "resumed", stop_after=3)
    assert not (tmp_path / "resumed").exists()
    assert len(list((tmp_path / ".resumed.partial" / "audio").iterdir())) == 3
    build(tmp_path / "resumed")
    build(tmp_path / "once")
    assert not (tmp_path / ".resumed.partial").exists()
    manifest = (tmp_path / "once" / "manifest.jsonl").read_text()
    assert (tmp_path / "resumed" / "manifest.jsonl").read_text() == manifest
    for record in map(json.loads, manifest.splitlines()):
        assert ((tmp_path / "resumed" / record["audio"]).read_bytes()
                == (tmp_path / "once" / record["audio"]).read_bytes())


def test_help_explains_the_commands() -> None:
    result = run_cli("data", "import", "--help")
    assert result.returncode == 0 and "--limit" in result.stdout and "Keep at most N items" in result.stdout
