"""`interp erase fit` and `interp erase eval` end to end on a tiny cache."""

from __future__ import annotations

import json

from interp.erasure import Eraser
from tests.helpers import run_cli


def test_fit_then_eval_writes_an_eraser_and_behaviour_predictions(sentiment_set, tmp_path) -> None:
    cache, eraser, run = tmp_path / "cache", tmp_path / "boc.safetensors", tmp_path / "run"
    made = run_cli("extract", "--model", "tiny-ultravox", "--data", sentiment_set, "--out", cache,
                   "--sites", "llm.layers.0,1", "--dtype", "float32")
    assert made.returncode == 0, made.stderr
    fitted = run_cli("erase", "fit", cache, "--data", sentiment_set, "--concept", "boc", "--out", eraser)
    assert fitted.returncode == 0, fitted.stderr
    assert "llm.layers.0" in fitted.stdout and "llm.layers.1" in fitted.stdout and eraser.is_file()
    control = tmp_path / "random-var.safetensors"  # the variance-matched control of the boc eraser
    matched = run_cli("erase", "fit", cache, "--data", sentiment_set, "--concept", "random", "--match", "boc",
                      "--match-by", "variance", "--random-space", "raw", "--out", control)
    assert matched.returncode == 0, matched.stderr
    removed = {name: site.variance_removed for name, site in Eraser.load(eraser).sites.items()}
    for name, site in Eraser.load(control).sites.items():
        assert site.variance_removed >= removed[name] and f"{site.variance_removed:.2%}" in matched.stdout
    evaluated = run_cli("erase", "eval", "--model", "tiny-ultravox", "--data", sentiment_set, "--eraser", eraser,
                        "--out", run, "--limit", "6")
    assert evaluated.returncode == 0, evaluated.stderr
    lines = (run / "tiny-ultravox+erase-boc" / f"{sentiment_set.name}.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all("scores" in json.loads(line) for line in lines)


def test_sites_the_eraser_was_not_fitted_at_are_refused_in_one_line(sentiment_set, tmp_path) -> None:
    cache, eraser = tmp_path / "cache", tmp_path / "e.safetensors"
    assert run_cli("extract", "--model", "tiny-ultravox", "--data", sentiment_set, "--out", cache,
                   "--sites", "llm.layers.0", "--dtype", "float32", "--limit", "8").returncode == 0
    fitted = run_cli("erase", "fit", cache, "--data", sentiment_set, "--concept", "energy", "--out", eraser)
    assert fitted.returncode == 0
    refused = run_cli("erase", "eval", "--model", "tiny-ultravox", "--data", sentiment_set, "--eraser", eraser,
                      "--sites", "llm.layers.2", "--out", tmp_path / "run", "--limit", "2")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "llm.layers.2" in refused.stderr
