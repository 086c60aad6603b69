"""`interp probe` end to end on a tiny cache: JSON with provenance, the figure, one-line errors."""

from __future__ import annotations

import json

from tests.helpers import run_cli


def test_probe_writes_scores_provenance_and_figure(sentiment_set, tmp_path) -> None:
    cache = tmp_path / "cache"
    made = run_cli("extract", "--model", "tiny-ultravox", "--data", sentiment_set, "--out", cache,
                   "--sites", "llm.layers.0,2", "--dtype", "float32")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "probes.json"
    result = run_cli("probe", cache, "--data", sentiment_set, "--probes", "energy,boc", "--folds", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    (report,) = record["reports"]
    assert report["sites"] == ["llm.layers.0", "llm.layers.2"]
    assert {(s["site"], s["probe"]) for s in report["scores"]} == {
        (site, probe) for site in ("llm.layers.0", "llm.layers.2") for probe in ("energy", "boc")}
    assert not set(report["train_items"]) & set(report["test_items"])
    assert record["provenance"]["command"] == "interp probe" and record["provenance"]["seed"] == 0
    assert "plotly" in out.with_suffix(".html").read_text()[:4_000_000]
    assert result.stdout.count("\tenergy\t") == 2


def test_probe_errors_are_one_line(sentiment_set, tmp_path) -> None:
    missing = run_cli("probe", tmp_path / "nope", "--data", sentiment_set)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
