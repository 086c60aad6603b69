"""`interp erase sweep` end to end on tiny-ultravox: table, figure, and a rerun that recomputes nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.helpers import run_cli


def _outputs(run: Path) -> dict[Path, int]:
    """mtime of every file the sweep computes (caches, erasers, predictions and their sidecars)."""
    def computed(path: Path) -> bool:
        return path.suffix in (".h5", ".safetensors", ".jsonl") or (
            path.suffix == ".json" and path.parent.name.startswith("tiny-ultravox"))  # sidecars, <set>.erasure.json

    return {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file() and computed(path)}


def _sweep_lines(stderr: str) -> list[str]:
    """What the sweep said it reused and computed (its INFO log lines on stderr), without the log prefix."""
    prefix = "INFO interp.erasure_sweep"
    return [line.split(": ", 1)[1] for line in stderr.splitlines() if line.startswith(prefix)]


def test_sweep_writes_table_and_figure_and_resumes_without_recomputing(sentiment_set, tmp_path) -> None:
    run = tmp_path / "run"
    argv = ["--threads", "1", "erase", "sweep", sentiment_set, "--model", "tiny-ultravox", "--out", run,
            "--concepts", "boc,random", "--layer-sets", "0-1", "--limit", "12"]
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr
    said = _sweep_lines(result.stderr)
    assert any("fit on 6, evaluate on 6 (disjoint halves)" in line for line in said), said
    assert any(line.startswith("extracted 12 items") for line in said), said
    assert "random" in result.stdout.splitlines()[-1]  # the table, last

    with (run / "sweep.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["set"], r["task"], r["concept"], r["layers"]) for r in rows] == [
        ("sentiment", "sentiment", "none (clean)", ""), ("sentiment", "sentiment", "boc", "0-1"),
        ("sentiment", "sentiment", "random", "0-1")]
    for row in rows:
        assert row["n_items"] == "6" and row["fit_items"] == "6" and float(row["chance"]) == 0.5
        assert float(row["ci_low"]) <= float(row["accuracy"]) <= float(row["ci_high"])
    boc, random = rows[1], rows[2]
    assert int(boc["sites"]) == 2 and float(boc["rank_mean"]) > 0
    assert float(random["rank_mean"]) > 0  # matched to the text concept's rank per site
    document = json.loads((run / "sweep.json").read_text(encoding="utf-8"))
    assert len(document["rows"]) == 3 and "half" in document["header"] and document["provenance"]["config"]["seed"] == 0
    assert set(document["sets"]["sentiment"]["fit_ids"]).isdisjoint(document["sets"]["sentiment"]["eval_ids"])
    for system in ("tiny-ultravox", "tiny-ultravox+erase-boc-L0-1", "tiny-ultravox+erase-random-L0-1"):
        lines = (run / system / "sentiment.jsonl").read_text(encoding="utf-8").splitlines()
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(document["sets"]["sentiment"]["eval_ids"])
    assert (run / "erasers" / "sentiment-boc-0-1.safetensors").is_file()
    figure = (run / "sweep.html").read_text(encoding="utf-8")
    assert "Plotly.newPlot" in figure and len(figure) > 1_000_000 and "<script src=" not in figure  # plotly.js inlined
    assert "layers 0-1" in figure and "random" in figure

    before = _outputs(run)
    assert len(before) >= 9
    again = run_cli(*argv)
    assert again.returncode == 0, again.stderr
    assert _outputs(run) == before
    said = _sweep_lines(again.stderr)
    assert not any(line.startswith(("extracted", "fitted", "clean baseline", "boc at", "random at"))
                   for line in said), said
    assert sum(line.startswith("skip:") for line in said) == 6  # cache, clean run, 2 erasers, 2 erased runs
    assert "random" in again.stdout.splitlines()[-1]  # the table is printed again, last


def test_sweep_refuses_another_split_in_the_same_run_in_one_line(sentiment_set, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "sweep_config.json").write_text(json.dumps({"model": "tiny-ultravox", "limit": 12, "split": "none",
                                                       "seed": 0, "positions": "audio", "random_match": "text",
                                                       "text_classes": 32, "dtype": "float32"}))
    argv = ["erase", "sweep", sentiment_set, "--model", "tiny-ultravox", "--out", run, "--concepts", "boc",
            "--layer-sets", "0", "--limit", "12"]
    result = run_cli(*argv)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "split 'none'" in result.stderr
    result = run_cli(*argv[:-6], "--concepts", "nope", "--layer-sets", "0")
    assert result.returncode == 2 and "unknown concept 'nope'" in result.stderr
    result = run_cli(*argv[:-6], "--concepts", "text@x,random", "--layer-sets", "0")  # a rank that is no number
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "'text@x'" in result.stderr, result.stderr
