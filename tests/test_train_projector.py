"""scripts/train_projector.py at toy scale on the real mini stack: log fields, exact resume after a stop,
same seed → same losses, exported projector loads strictly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.models.ultravox import UltravoxProjector
from tests.helpers import load_script

pytestmark = pytest.mark.slow


def _losses(work: Path) -> list[tuple[int, float, float, float]]:
    lines = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"], e["ce"], e["kl"]) for e in lines if "loss" in e]


def test_toy_run_logs_resumes_exactly_and_exports(tmp_path) -> None:
    tp = load_script("train_projector")
    common = ["--n-train", "4", "--n-val", "2", "--steps", "3", "--batch-size", "2", "--kl-batch", "1",
              "--lm-fraction", "0.5", "--eval-every", "2", "--eval-items", "1", "--threads", "1", "--seed", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    exported = tmp_path / "out" / "projector.safetensors"
    result = tp.main(["--work", str(a), *common, "--export", str(exported)])
    assert result["completed"] and result["step"] == 3

    entries = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    steps = [e for e in entries if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for entry in steps:
        assert {"step", "loss", "ce", "kl", "lr", "items_per_s", "elapsed_s"} <= set(entry)
        assert entry["kl"] > 0 and entry["ce"] > 0
    assert any("val_wer" in e and e["step"] == 2 for e in entries)
    assert any(e.get("final") for e in entries)
    prep = json.loads((a / "prep_stats.json").read_text())
    assert prep["utterances"] == 6

    # The cached data is reused (no second prep), then the run stops at its budget after one step and resumes.
    b.mkdir()
    shutil.copy(a / "sentences.json", b / "sentences.json")
    shutil.copytree(a / "shards", b / "shards")
    stopped = tp.main(["--work", str(b), *common, "--max-minutes", "0"])
    assert stopped["step"] == 1 and not stopped["completed"]
    assert (b / "checkpoint.safetensors").exists()
    resumed = tp.main(["--work", str(b), *common, "--no-final-eval"])
    assert resumed["completed"] and resumed["step"] == 3
    # Same seed → identical losses, and the resumed run continues exactly where the first left off.
    assert _losses(b) == _losses(a)

    state = load_file(str(exported))
    projector = UltravoxProjector(tp.load_stack()["model"].config)
    projector.load_state_dict(state, strict=True)
    assert set(state) == set(tp.load_stack()["model"].multi_modal_projector.state_dict())
    assert all(t.dtype == torch.float32 for t in state.values())
    card = json.loads(exported.with_suffix(".json").read_text())
    assert card["training"]["steps_done"] == 3 and card["val_wer"] is not None


def test_real_text_sentences_are_plain_sorted_and_exclude_what_is_seen() -> None:
    """Source (c): real English sentences from the Python reference and package descriptions, filtered like
    SmolLM2's samples; the ones already seen (suite items, other sources) are left out."""
    tp = load_script("train_projector")
    found = tp.real_text_sentences(set())
    assert len(found) >= 300 and found == sorted(set(found))
    assert all(tp._CLEAN.match(s) and 6 <= len(s.split()) <= 25 and s[0].isupper() for s in found)
    assert not any(ch.isdigit() for s in found for ch in s)
    assert tp.real_text_sentences(set(found[:10])) == found[10:]
