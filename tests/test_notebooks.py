"""The tutorial notebooks run top to bottom on a tiny cache, produce what they say, and are committed clean.

One fixture serves all four: the 12-item sentiment set and a cache that `interp extract` makes from it with
tiny-ultravox (random weights, so the numbers mean nothing; the tests check that the notebooks run the real
APIs end to end and that what they write is well formed and consistent with the CLI).
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
from interp.erasure import Eraser
from interp.sites import sort_sites
from probes import PROBES, ProbeReport
from tests.helpers import run_cli

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SETTINGS = ("CASCADE_INTERP_MODEL", "CASCADE_INTERP_SET", "CASCADE_INTERP_WORK", "CASCADE_INTERP_ACTIVATIONS",
            "CASCADE_INTERP_THREADS")
KERNEL = "cascade-interp-tests"
CELL_TIMEOUT = 300  # seconds per cell; each notebook takes about 10 s on the tiny cache
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


def test_01_extracts_the_cache_the_cli_extracts(sentiment_set, tiny_cache, kernels, tmp_path) -> None:
    """The notebook's own extraction (its prompts, sites, positions) gives the rows `interp extract`
    gives, and its figure covers every site."""
    notebook = execute("01_extract_and_explore", kernels, tmp_path, set=sentiment_set, work=tmp_path / "work")
    made, reference = ActivationCache.open(tmp_path / "work" / "cache"), ActivationCache.open(tiny_cache)
    assert made.sites == reference.sites == SITES
    assert [m.id for m in made.items] == [m.id for m in reference.items] and len(made) == 12
    assert made.header.model_info["spec"] == "tiny-ultravox"
    for key, values in reference.row_table().items():
        assert np.array_equal(made.row_table()[key], values, equal_nan=True), key
    for site in SITES:
        np.testing.assert_allclose(made.read(site), reference.read(site), rtol=1e-2, atol=1e-3)
    figure = (tmp_path / "work" / "row_norms.html").read_text()
    assert all(f'"name":"{site}"' in figure for site in SITES)
    assert "seconds per audio row: median 0.160" in printed(notebook)


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
