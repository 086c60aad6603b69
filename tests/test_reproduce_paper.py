"""scripts/reproduce_paper.py: its dry run takes every end-to-end architecture through every stage of the study
from checkpoint folders, as a real run would; without a model it refuses in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from interp.study import STAGES
from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.py"


@pytest.mark.usefixtures("one_torch_thread")
def test_dry_run_runs_every_stage_for_every_model(tmp_path, capsys) -> None:
    out = tmp_path / "paper"
    # Two SNRs instead of four: the noise path is the same, the behaviour stage half as long.
    assert load_script("reproduce_paper").main(["--dry-run", "--out", str(out), "--snrs", "10,0"]) == 0
    printed = capsys.readouterr().out
    for model in ("qwen2-audio", "ultravox", "phi4mm"):
        assert (out / model / "report.html").is_file()
        for stage in STAGES:
            assert (out / model / "stages" / f"{stage}.json").is_file(), (model, stage)
            assert f"{model:12s} {stage:10s} done" in printed
    assert "implicit-cascade" in (out / "ultravox" / "behave" / "stats.json").read_text()
    # beside the cascades: the disguise of the matched cascade's parts (the positive control) with its implicit
    # cascade, and the speech model, the matched cascade and the control under swap and silence
    assert sorted(p.name for p in (out / "ultravox" / "behave").iterdir() if p.is_dir()) == [
        "cascade-s", "cascade-w", "disguise-whisper", "disguise-whisper+silence", "disguise-whisper+swap",
        "disguise-whisper-implicit-cascade-L2", "implicit-cascade-L2", "matched-cascade", "matched-cascade+silence",
        "matched-cascade+swap", "own-backbone-cascade", "ultravox-ultravox", "ultravox-ultravox+silence",
        "ultravox-ultravox+swap"]
    assert (out / "ultravox" / "controls" / "disguise-whisper" / "erasure" / "sweep.json").is_file()
    # Phi-4-MM answered with its speech LoRA on, and its predictions record it.
    assert '"speech_lora": "on"' in (out / "phi4mm" / "behave" / "phi4mm-phi4mm" / "sst2.json").read_text()
    # κ of each model with both cascades, as printed, is the stats stage's for that pair (which tests/test_stats.py
    # checks against sklearn; the tiny models' constant answers leave sklearn's own κ undefined here).
    for model, speech in (("qwen2-audio", "qwen2-audio-qwen2-audio"), ("ultravox", "ultravox-ultravox"),
                          ("phi4mm", "phi4mm-phi4mm")):
        table = printed[printed.index(f"{model}: κ with matched-cascade"):].splitlines()
        row = next(line for line in table if line.split()[:1] == ["sst2"])
        pairs = json.loads((out / model / "behave" / "stats.json").read_text())["sets"]["sst2"]["kappa"]
        expected = [next(pair["value"] for pair in pairs if {pair["a"], pair["b"]} == {speech, cascade})
                    for cascade in ("matched-cascade", "own-backbone-cascade")]
        assert [float(value) for value in row.split()[1:]] == pytest.approx(expected, abs=5e-4)


def test_without_a_model_it_refuses_in_one_line(tmp_path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "paper")], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no model given" in result.stderr
    assert not (tmp_path / "paper").exists()
