"""compare_projector_checks.py: the paired WER difference of two check_projector.py results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.mini_ultravox import compare_projector_checks as compare
from interp.text_metrics import word_error_rate

REFERENCES = ["the cat sat on the mat", "a quick brown fox", "rain falls in spain", "she reads every night",
              "four small boats", "the bell rang twice"]


def _check_file(path, repeats: list[str], source_of=lambda i: "lm-heldout" if i % 2 else "template-heldout"):
    rows = [{"id": f"val-{i}", "source": source_of(i), "reference": ref, "mini_ultravox": rep, "whisper_base": ref}
            for i, (ref, rep) in enumerate(zip(REFERENCES, repeats))]
    path.write_text(json.dumps({"transcripts": rows}))
    return path


def test_difference_is_the_wer_difference_and_the_interval_resamples_utterances_in_pairs(tmp_path, capsys) -> None:
    better = ["the cat sat on the mat", "a quick brown box", "rain falls in spain", "she reads every night",
              "four small boats", "the bell rang"]
    worse = ["the hat sat on a mat", "a quick brown box", "rain in spain", "he reads at night",
             "four small boats", "bell rang twice"]
    a, b = _check_file(tmp_path / "a.json", better), _check_file(tmp_path / "b.json", worse)

    result = compare.main([str(a), str(b), "--n-boot", "2000", "--out", str(tmp_path / "cmp.json")])
    held_out = result["held-out"]["mini_ultravox"]
    assert result["held-out"]["n"] == 6 and "librispeech" not in result
    assert held_out["wer_a"] == pytest.approx(word_error_rate(REFERENCES, better))
    assert held_out["wer_b"] == pytest.approx(word_error_rate(REFERENCES, worse))
    assert held_out["difference"] == pytest.approx(held_out["wer_a"] - held_out["wer_b"])
    # Every utterance of A has no more errors than B's: every paired resample's difference is <= 0, and some
    # resample draws only error-free pairs (difference 0), so the interval ends at or below 0 but not above.
    assert held_out["low"] < held_out["difference"] < 0 and held_out["high"] <= 0
    per_source = result["lm-heldout"]["mini_ultravox"]
    odd = [i for i in range(6) if i % 2]
    assert per_source["wer_a"] == pytest.approx(word_error_rate([REFERENCES[i] for i in odd], [better[i] for i in odd]))
    # Whisper's transcripts are the same in both files: no difference on any resample.
    assert result["held-out"]["whisper_base"]["low"] == result["held-out"]["whisper_base"]["high"] == 0
    assert "A - B" in capsys.readouterr().out
    written = json.loads((tmp_path / "cmp.json").read_text())
    assert written["groups"]["held-out"]["n"] == 6 and written["provenance"]["config"]["n_boot"] == 2000

    # Same file twice: a zero-width interval at 0; swapping A and B flips the sign.
    same = compare.main([str(a), str(a), "--n-boot", "200"])["held-out"]["mini_ultravox"]
    assert same["difference"] == same["low"] == same["high"] == 0
    swapped = compare.main([str(b), str(a), "--n-boot", "2000"])["held-out"]["mini_ultravox"]
    assert swapped["difference"] == pytest.approx(-held_out["difference"])
    assert np.isclose(swapped["low"], -held_out["high"]) and np.isclose(swapped["high"], -held_out["low"])


def test_utterances_heard_as_the_same_samples_form_their_own_group(tmp_path, capsys) -> None:
    """With audio hashes in both files, "same audio" compares only the utterances both checks heard alike."""
    a, b = _check_file(tmp_path / "a.json", REFERENCES), _check_file(tmp_path / "b.json", ["x"] * 6)
    compare.main([str(a), str(b), "--n-boot", "200"])
    assert "no audio hashes" in capsys.readouterr().out
    for path, changed in ((a, None), (b, 2)):
        check = json.loads(path.read_text())
        for i, row in enumerate(check["transcripts"]):
            row["audio_sha256"] = f"sha-{i}" + ("-other" if i == changed else "")
        path.write_text(json.dumps(check))
    result = compare.main([str(a), str(b), "--n-boot", "200"])
    same = [i for i in range(6) if i != 2]
    assert result["same audio"]["n"] == 5 and result["held-out"]["n"] == 6
    assert result["same audio"]["mini_ultravox"]["wer_b"] == pytest.approx(
        word_error_rate([REFERENCES[i] for i in same], ["x"] * 5))
    assert "5 of 6 held-out utterances had the same samples" in capsys.readouterr().out


def test_files_of_different_utterances_or_missing_files_are_one_line(tmp_path) -> None:
    a = _check_file(tmp_path / "a.json", REFERENCES)
    fewer = tmp_path / "fewer.json"
    rows = json.loads(a.read_text())["transcripts"][:5]
    fewer.write_text(json.dumps({"transcripts": rows}))
    with pytest.raises(SystemExit, match="scored different utterances"):
        compare.main([str(a), str(fewer)])
    changed = json.loads(a.read_text())
    changed["transcripts"][0]["reference"] = "another sentence"
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match="different references"):
        compare.main([str(a), str(tmp_path / "changed.json")])
    with pytest.raises(SystemExit, match="does not exist"):
        compare.main([str(a), str(tmp_path / "missing.json")])
    (tmp_path / "other.json").write_text(json.dumps({"figures": {}}))
    with pytest.raises(SystemExit, match="not a check_projector.py result"):
        compare.main([str(a), str(tmp_path / "other.json")])
    (tmp_path / "partial.json").write_text(json.dumps({"transcripts": [{"id": "val-0", "reference": "a b"}]}))
    with pytest.raises(SystemExit, match="transcripts without mini_ultravox, source, whisper_base"):
        compare.main([str(a), str(tmp_path / "partial.json")])
