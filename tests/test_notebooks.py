"""The tutorial notebooks run top to bottom, produce what they say, and are committed clean.

02-04 share one fixture: the 12-item sentiment set and a cache that `interp extract` makes from it with
tiny-ultravox (random weights, so the numbers mean nothing; the tests check that the notebooks run the real
APIs end to end and that what they write is well formed and consistent with the CLI). 01 (nnsight tracing) and
05 (TransformerLens) run on the real mini stack, mini-ultravox and the oracle's SmolLM2, where a patch moving
the answer means something.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from activations import ActivationCache
from interp.data import SpokenSet
from interp.erasure import Eraser
from interp.sites import sort_sites
from probes import PROBES, ProbeReport
from tests.helpers import run_cli

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SETTINGS = ("CASCADE_INTERP_MODEL", "CASCADE_INTERP_SET", "CASCADE_INTERP_WORK", "CASCADE_INTERP_ACTIVATIONS",
            "CASCADE_INTERP_THREADS")
KERNEL = "cascade-interp-tests"
CELL_TIMEOUT = 300  # seconds per cell; 02-04 take about 10 s each on the tiny cache, 01 and 05 about 30 s
SITES = ["projector", "llm.layers.0", "llm.layers.1", "llm.layers.2"]


@pytest.fixture(scope="session")
def tiny_cache(sentiment_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-ultravox's projector and LLM layers at the audio positions of the sentiment set, made by the CLI."""
    out = tmp_path_factory.mktemp("notebook-cache") / "cache"
    made = run_cli("extract", "--model", "tiny-ultravox", "--data", sentiment_set, "--out", out,
                   "--sites", "projector,llm.layers.*")
    assert made.returncode == 0, made.stderr
    return out


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec running this interpreter, so the kernels import the package under test whatever kernels
    the user has installed."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(root / KERNEL)
    return root


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CASCADE_INTERP_WORK of notebooks 02-04: one folder, so 04's run folder also holds 03's implicit cascade."""
    return tmp_path_factory.mktemp("notebook-work")


def execute(name: str, kernels: Path, cwd: Path, **settings: str | Path) -> nbformat.NotebookNode:
    """Run notebooks/<name>.ipynb in a fresh kernel with the given settings (others unset); return it executed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    env = {key: value for key, value in os.environ.items() if key not in SETTINGS}
    env.update({"CASCADE_INTERP_MODEL": "tiny-ultravox", "CASCADE_INTERP_THREADS": "1"})
    env.update({f"CASCADE_INTERP_{key.upper()}": str(value) for key, value in settings.items()})
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    cwd.mkdir(parents=True, exist_ok=True)
    NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    return notebook


def printed(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook's cells printed to stdout."""
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")


def _scores(text: str, label: str) -> list[tuple[np.ndarray, str]]:
    """Each `LABEL  [a b] → 'choice'` line the notebook printed, LABEL matching the regular expression `label`:
    (scores, chosen answer)."""
    found = re.findall(rf"{label}\s+\[([^\]]+)\] → '([^']+)'", text)
    return [(np.array(values.split(), dtype=float), chosen) for values, chosen in found]


def test_01_traces_mini_ultravox_patches_it_and_extracts_the_cache(sentiment_set, kernels, tmp_path) -> None:
    """On the real mini-ultravox: the trace reads llm.layers.12 at the audio positions (the rows the notebook's
    cache stores), zeroing them or adding the two items' direction changes the scores (the direction moves the
    second item toward the first's answer), and the cache for 02-04 covers the set."""
    notebook = execute("01_extract_and_explore", kernels, tmp_path, model="mini-ultravox", set=sentiment_set,
                       work=tmp_path / "work")
    text = printed(notebook)
    assert "the site we look at: llm.layers.12" in text
    clean, zeroed = _scores(text, "clean"), _scores(text, re.escape("llm.layers.12 audio zeroed"))
    assert len(clean) == len(zeroed) == 2
    assert all(np.abs(a - b).max() > 1e-2 for (a, _), (b, _) in zip(clean, zeroed))
    steered = [scores for scale in ("-1", "+0", "+1")
               for scores, _ in _scores(text, re.escape(f"audio rows {scale}·d"))]
    spoken = SpokenSet.open(sentiment_set)
    toward = spoken.items[0].choices.index(spoken.items[0].answer)  # the first item's answer
    margins = [scores[toward] - np.delete(scores, toward).max() for scores in steered]
    assert len(margins) == 3 and margins[0] < margins[1] < margins[2]
    assert np.allclose(steered[1], clean[1][0])  # adding 0·d is the clean pass
    made = ActivationCache.open(tmp_path / "work" / "cache")
    assert made.sites == ["projector"] + [f"llm.layers.{i}" for i in range(30)]
    assert [m.id for m in made.items] == [item.id for item in spoken.items] and len(made) == 12
    assert made.header.model_info["spec"] == "mini-ultravox"
    assert "seconds per audio row: median 0.160" in text
    relative = float(re.search(r"max relative difference ([0-9.e+-]+)", text).group(1))
    assert relative < 1e-2  # the trace's rows are the cache's, up to float16
    assert '"name":"audio"' in (tmp_path / "work" / "site_norms.html").read_text()


def test_02_probes_every_site_and_matches_the_hand_made_ctc_probe(sentiment_set, tiny_cache, kernels, work) -> None:
    notebook = execute("02_probes", kernels, work, set=sentiment_set, work=work, activations=tiny_cache)
    report = ProbeReport.from_dict(json.loads((work / "probes.json").read_text()))
    assert report.sites == tuple(sort_sites(SITES)) and report.probes == PROBES
    assert {(s.site, s.probe) for s in report.scores} == {(site, probe) for site in SITES for probe in PROBES}
    train, test = set(report.train_items), set(report.test_items)
    assert train | test == {meta.id for meta in ActivationCache.open(tiny_cache).items} and not train & test
    assert all(np.isfinite(s.score) and s.score <= 1 for s in report.scores if s.probe in ("energy", "ctc"))
    hand_made = float(re.search(r"llm\.layers\.2: 1 − CER (-?[0-9.]+)", printed(notebook)).group(1))
    assert hand_made == pytest.approx(report.score("llm.layers.2", "ctc").score, abs=6e-4)  # same split and seed
    assert (work / "probes.html").is_file()


def test_03_lens_scores_every_layer_and_answers_with_the_lens_text(sentiment_set, tiny_cache, kernels, work) -> None:
    execute("03_logit_lens", kernels, work, set=sentiment_set, work=work, activations=tiny_cache)
    report = json.loads((work / "lens.json").read_text())
    assert [entry["layer"] for entry in report["layers"]] == [0, 1, 2] and report["n_items"] == 12
    for entry in report["layers"]:
        estimate = entry["precision"]
        assert 0 <= estimate["low"] <= estimate["value"] <= estimate["high"] <= 1
    assert [strip["id"] for strip in report["strips"]] == [m.id for m in ActivationCache.open(tiny_cache).items[:3]]
    assert (work / "lens_precision.html").is_file() and (work / "lens_strip.html").is_file()
    lines = (work / "run" / "implicit-cascade-L2" / f"{sentiment_set.name}.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all("lens_text" in json.loads(line) for line in lines)


def test_04_erases_at_audio_positions_and_compares_the_answers(sentiment_set, tiny_cache, kernels, work) -> None:
    notebook = execute("04_erasure_and_behaviour", kernels, work, set=sentiment_set, work=work,
                       activations=tiny_cache)
    text, control = (Eraser.load(work / "erasers" / f"{concept}.safetensors") for concept in ("text", "random"))
    assert list(text.sites) == list(control.sites) == SITES[1:]
    assert all(0 < text.sites[site].rank == control.sites[site].rank for site in text.sites)  # matched control
    assert "before the audio 0.00e+00" in printed(notebook)  # text before the audio is untouched
    systems = {"tiny-ultravox", "tiny-ultravox+erase-text", "tiny-ultravox+erase-random"}
    entry = json.loads((work / "run" / "stats.json").read_text())["sets"][sentiment_set.name]
    assert systems <= set(entry["systems"]) and entry["n_items"] == 12
    assert all(0 <= entry["accuracy"][system]["value"] <= 1 for system in systems)
    pairs = {(test["a"], test["b"]) for test in entry["mcnemar"] if 0 <= test["p_value"] <= 1}
    assert {("tiny-ultravox", "tiny-ultravox+erase-text"), ("tiny-ultravox", "tiny-ultravox+erase-random")} <= pairs
    erasure = json.loads((work / "run" / "tiny-ultravox+erase-text" / f"{sentiment_set.name}.erasure.json").read_text())
    assert erasure["concept"] == "text" and erasure["positions"] == "audio"
    assert (work / "run" / "kappa_heatmap.html").is_file()


def test_05_bridges_the_oracles_smollm2_to_transformer_lens_and_patches_heads(kernels, tmp_path) -> None:
    """On the oracle's real SmolLM2: the bridge shares its weights, gives its residual stream and its scores, and
    zeroing the heads that read the transcript moves the scores while the TextLM answers as before."""
    notebook = execute("05_text_side_transformer_lens", kernels, tmp_path, work=tmp_path / "work")
    text = printed(notebook)
    assert "smollm2-135m-instruct: 30 layers" in text and "weights shared with the TextLM: True" in text
    assert "llm.layers.29  blocks.29.hook_resid_post" in text
    difference = float(re.search(r"max \|bridge − TextLM\| ([0-9.e+-]+)", text).group(1))
    assert difference < 5e-3  # eager against sdpa attention, on a stream whose entries reach 2e4
    [(own, _)], [(bridged, _)] = _scores(text, re.escape("TextLM.score_choices")), _scores(text, "bridge")
    np.testing.assert_allclose(bridged, own, atol=5e-3)
    assert len(re.findall(r"of its attention on the transcript", text)) == 3
    (clean, _), *zeroed = _scores(text, "clean") + _scores(text, r"zeroed(?: L\d+H\d+)+")
    assert len(zeroed) == 2 and all(np.abs(scores - clean).max() > 1e-2 for scores, _ in zeroed)
    np.testing.assert_array_equal(_scores(text, "TextLM afterwards")[0][0], own)  # the shared model is untouched
    figure = (tmp_path / "work" / "attention_pattern.html").read_text()
    assert re.search(r"blocks\.\d+\.attn\.hook_pattern at the answer position", figure)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.stem)
def test_notebooks_are_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.stem)
def test_notebooks_document_their_settings_and_name_no_local_path(path: Path) -> None:
    """Every environment variable a notebook reads is in its first cell's table; no path of this machine."""
    notebook = nbformat.read(path, as_version=4)
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    read = set(re.findall(r'os\.environ\.get\("(CASCADE_INTERP_\w+)"', source))
    assert read and notebook.cells[0].cell_type == "markdown"
    assert all(f"`{name}`" in notebook.cells[0].source for name in read)
    assert not re.search(r"/(work|tmp|home|Users)/", source)
