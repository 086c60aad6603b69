"""check_projector.py: the repeat check of the shipped (or a given) projector, and its audio cache."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from experiments.mini_ultravox import check_projector as check
from interp.data.audio import read_audio
from interp.data.loaders import load_librispeech
from interp.resources import resource_path


def test_checks_sharing_an_audio_cache_score_the_same_samples_and_skip_whisper(tmp_path, monkeypatch) -> None:
    """The first check synthesises and transcribes; a second one with the same --audio-cache reads both back
    (Whisper is not even loaded), here scoring an exported copy of the shipped projector given by --projector,
    which repeats exactly as the shipped one does."""
    cache = tmp_path / "audio"
    first = check.main(["--limit", "2", "--audio-cache", str(cache), "--out", str(tmp_path / "a.json")])
    assert first["held_out"]["all"]["n"] == 2 and first["librispeech"]["n"] == 4
    a = json.loads((tmp_path / "a.json").read_text())
    items = check.held_out_items(None, 2)
    assert [t["reference"] for t in a["transcripts"][:2]] == [it["text"] for it in items]
    assert a["provenance"]["config"]["held_out"] == "mini_ultravox_heldout.json"
    assert a["provenance"]["config"]["weights"]["projector"] == "mini_ultravox_projector.safetensors"
    assert len(list(cache.glob("*.npy"))) == 2
    assert set(json.loads((cache / check.WHISPER_CACHE).read_text())) == {t["audio_sha256"] for t in a["transcripts"]}

    copy = tmp_path / "copy.safetensors"
    save_file(load_file(str(resource_path("mini_ultravox_projector.safetensors"))), str(copy))
    loaded = []
    real_load_model = check.load_model
    monkeypatch.setattr(check, "load_model", lambda name: loaded.append(name) or real_load_model(name))
    check.main(["--limit", "2", "--audio-cache", str(cache), "--projector", str(copy),
                "--out", str(tmp_path / "b.json")])
    b = json.loads((tmp_path / "b.json").read_text())
    assert loaded == ["mini-ultravox"]  # every clip's Whisper transcript came from the cache
    assert [t["audio_sha256"] for t in b["transcripts"]] == [t["audio_sha256"] for t in a["transcripts"]]
    assert [t["mini_ultravox"] for t in b["transcripts"]] == [t["mini_ultravox"] for t in a["transcripts"]]
    assert b["provenance"]["config"]["weights"] == {"projector": str(copy),
                                                    "sha256": hashlib.sha256(copy.read_bytes()).hexdigest()}


def test_cached_samples_are_what_a_check_hears(tmp_path) -> None:
    """speak() returns the cached samples for the same engine, text and settings, whatever they are (so two
    checks hear one synthesis), and synthesises afresh for another text."""
    item = check.held_out_items(None, 1)[0]
    spoken = check.speak(item, tmp_path)
    [cached] = tmp_path.glob("*.npy")
    np.save(cached, np.zeros(1600, dtype=np.float32))
    assert check.speak(item, tmp_path).tolist() == [0.0] * 1600
    other = {**item, "text": item["text"] + " Once more."}
    assert check.speak(other, tmp_path).size > 1600 and len(list(tmp_path.glob("*.npy"))) == 2
    assert spoken.size > 1600 and check.samples_sha256(spoken) != check.samples_sha256(np.zeros(1600, np.float32))


@pytest.mark.filterwarnings("ignore:Passing `no_repeat_ngram_size`:UserWarning")  # new tokens only: as meant
def test_loop_guards_reach_greedy_decoding(monkeypatch) -> None:
    """--no-repeat-ngram 1 leaves no token twice in an answer whose plain greedy decoding repeated one, and
    setting the guards back to 0 / 1.0 gives plain greedy's tokens again."""
    model = check.load_mini_ultravox(None)
    lm = model.model.language_model
    answers = []  # the token ids each generate call returned
    real_generate = lm.generate
    monkeypatch.setattr(lm, "generate", lambda **kw: answers.append(real_generate(**kw)[0].tolist()) or
                        torch.tensor([answers[-1]]))
    clips = [read_audio(item.recording)[0] for item in load_librispeech(resource_path("speech/librispeech"))]

    def decode_all(no_repeat_ngram: int) -> list[list[int]]:
        assert check.guard_loops(model, no_repeat_ngram, 1.0)["no_repeat_ngram_size"] == no_repeat_ngram
        answers.clear()
        for clip in clips:
            model.generate(clip, check.REPEAT_PROMPT, max_new_tokens=40)
        return list(answers)

    greedy = decode_all(0)
    repeating = [i for i, ids in enumerate(greedy) if len(set(ids)) < len(ids)]
    assert repeating  # 40 greedy tokens of read speech repeat some token
    guarded = decode_all(1)
    assert all(len(set(guarded[i])) == len(guarded[i]) for i in repeating)
    assert decode_all(0) == greedy


def test_a_projector_that_is_not_mini_ultravox_is_one_line(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        check.main(["--limit", "1", "--projector", str(tmp_path / "missing.safetensors")])
    wrong = tmp_path / "wrong.safetensors"
    save_file({"linear.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(SystemExit, match="not a mini-ultravox projector"):
        check.main(["--limit", "1", "--projector", str(wrong)])
    with pytest.raises(SystemExit):  # argparse's one line: "--no-repeat-ngram must be >= 0 ..."
        check.main(["--no-repeat-ngram", "-1"])
