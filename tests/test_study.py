"""The staged study (interp.study) end to end on tiny models: every stage, the report, reuse and refusal."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from interp.errors import InterpError
from interp.study import STAGES, StudyPlan, load_plan, run_study, stage_times
from tests.helpers import load_script, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONTROL = "disguise-whisper"
"""The behaviour name of the test's control, a disguise of the tiny random Whisper and tiny-llama."""


@pytest.fixture(scope="module")
def asr(tmp_path_factory) -> str:
    """The tiny random Whisper as a checkpoint folder: the ASR of the tiny disguise that stands in for
    mini-disguise (a speech LLM that is a cascade by construction) as the study's control."""
    from interp.models.tiny import tiny_whisper

    folder = tmp_path_factory.mktemp("asr") / "whisper"
    whisper, processor = tiny_whisper(seed=0)
    whisper.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def tiny_plan(asr: str, **changes) -> StudyPlan:
    plan = StudyPlan(speech_model="tiny-ultravox", cascade="tiny-llama", extra_systems=[],
                     controls=[f"disguise:asr={asr},llm=tiny-llama"], ablations=["swap", "silence"],
                     suites={"sentiment": 8, "pitch": 6}, benchmarks={"sst2": 6}, noisy_sets=["sentiment"],
                     snrs=[10.0, 0.0], analysis_sets=["sentiment"], concepts=["text", "random", "random-var"],
                     engine="espeak")
    for key, value in changes.items():
        setattr(plan, key, value)
    return plan


@pytest.fixture(scope="module")
def study(tmp_path_factory, asr) -> tuple[Path, list]:
    """The tiny study, on one torch thread: a module fixture is set up before the function-scoped
    one_torch_thread, and more threads make it several times slower on a busy machine."""
    import torch

    out = tmp_path_factory.mktemp("study") / "demo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, run_study(tiny_plan(asr), out)
    finally:
        torch.set_num_threads(threads)


class _Page(HTMLParser):
    """Script tags and their sources, element ids and section headings of the report."""

    def __init__(self) -> None:
        super().__init__()
        self.sources, self.ids, self.links = [], set(), []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "script" and attributes.get("src"):
            self.sources.append(attributes["src"])
        if tag == "link" and attributes.get("href"):
            self.links.append(attributes["href"])
        if "id" in attributes:
            self.ids.add(attributes["id"])


def test_every_stage_runs_and_writes_its_outputs(study) -> None:
    out, results = study
    assert [r.stage for r in results] == list(STAGES) and not any(r.skipped for r in results)
    for result in results:
        assert result.outputs and all(Path(p).exists() for p in result.outputs), result
        marker = json.loads((out / "stages" / f"{result.stage}.json").read_text())
        assert marker["provenance"]["config"]["speech_model"] == "tiny-ultravox" and "versions" in marker["provenance"]
    assert set(stage_times(out)) == set(STAGES)
    assert sorted(p.name for p in (out / "sets").iterdir()) == ["pitch", "sentiment", "sentiment-babble", "sst2"]
    stats = json.loads((out / "behave" / "stats.json").read_text())
    assert {"sentiment", "pitch", "sst2", "sentiment-babble-snr0", "sentiment-babble-snr10"} <= set(stats["sets"])
    # the implicit cascade answered the analysis set inside the behaviour run, so stats compare it with the cascade
    assert "implicit-cascade-L2" in stats["sets"]["sentiment"]["systems"]
    assert any({k["a"], k["b"]} == {"implicit-cascade-L2", "tiny-llama"} for k in stats["sets"]["sentiment"]["kappa"])
    probes = json.loads((out / "probes.json").read_text())
    assert [r["cache"].rsplit("/", 1)[-1] for r in probes["reports"]] == ["sentiment-encoder", "sentiment"]
    sweep = json.loads((out / "erasure" / "sweep.json").read_text())
    assert [r["concept"] for r in sweep["rows"]] == ["none (clean)", "text", "random", "random-var"]


def test_every_instrument_reads_the_control_and_the_ablations_answer_beside_the_speech_model(study) -> None:
    """The control (a disguise: a cascade by construction) gets its own caches, probes, lens and erasure sweep
    under OUT/controls/<name>/ and answers every set; the speech model, the control and the cascade (when it hears
    audio: tiny-llama reads the transcript, so it is left out) answer the analysis set under every ablation, and
    `interp stats` lists those runs."""
    out, _ = study
    control = out / "controls" / CONTROL
    assert (control / "caches" / "sentiment" / "manifest.json").is_file()
    assert [r["cache"].rsplit("/", 1)[-1] for r in json.loads((control / "probes.json").read_text())["reports"]] \
        == ["sentiment"]  # the disguise has no encoder layers
    lens = json.loads((control / "lens" / "sentiment.json").read_text())
    assert lens["implicit_cascade"]["system"].startswith(f"{CONTROL}-implicit-cascade-L")
    sweep = json.loads((control / "erasure" / "sweep.json").read_text())
    assert [r["concept"] for r in sweep["rows"]] == ["none (clean)", "text", "random", "random-var"]
    assert all(r["variance_removed"] is not None for r in sweep["rows"])
    stats = json.loads((out / "behave" / "stats.json").read_text())
    assert {CONTROL, lens["implicit_cascade"]["system"]} <= set(stats["sets"]["sentiment"]["systems"])
    assert CONTROL in stats["sets"]["sst2"]["systems"]
    expected = {(system, ablation) for system in ("tiny-ultravox", CONTROL) for ablation in ("swap", "silence")}
    for system, ablation in expected:
        assert (out / "behave" / f"{system}+{ablation}" / "sentiment.jsonl").is_file()
    assert {(r["system"], r["ablation"]) for r in stats["ablations"]} == expected
    assert {r["set"] for r in stats["ablations"]} == {"sentiment"}
    assert all(r["n"] == 8 and r["accuracy"] is not None for r in stats["ablations"])


def test_the_report_is_self_contained_and_shows_the_numbers_of_its_sources(study) -> None:
    out, _ = study
    text = (out / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert page.sources == [] and page.links == []  # no CDN, no external file: opens offline
    assert {"sets", "behaviour", "probes", "lens", "erasure", "provenance"} <= page.ids
    figures = [i for i in page.ids if i.startswith("figure-")]
    assert len(figures) == text.count("Plotly.newPlot(") >= 7  # error overlap has no 3-way set here: a line instead
    assert text.count("plotly.js v") == 1  # the library is inlined once
    stats = json.loads((out / "behave" / "stats.json").read_text())
    accuracy = stats["sets"]["sst2"]["accuracy"]["tiny-ultravox"]
    assert f"{accuracy['value']:.3f} [{accuracy['low']:.3f}, {accuracy['high']:.3f}]" in text
    lens = json.loads((out / "lens" / "sentiment.json").read_text())
    assert f"accuracy {lens['implicit_cascade']['accuracy']:.3f}" in text
    assert "The paper's figures" in text and "0.93" in text  # Ultravox's AG News κ, labelled as the paper's
    assert "Conditional error overlap" in text and "no multi-class set" in text
    assert re.search(r"<td>total</td><td>\d+\.\d{3}</td>", text)


def _two(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _sections(text: str) -> dict[str, str]:
    """The report's text by section (h2 id), unescaped."""
    parts = re.split(r"<h2 id='([a-z_]+)'>", text)
    return {parts[i]: html.unescape(parts[i + 1]) for i in range(1, len(parts) - 1, 2)}


def test_the_report_draws_every_instrument_between_the_control_and_the_ablations(study) -> None:
    """Behaviour, probes, lens, speech vs text and erasure each show the control beside the speech model, with one
    sentence computed from their numbers; behaviour shows κ with the cascade as a table and the ablations' rows."""
    out, _ = study
    text = (out / "report.html").read_text(encoding="utf-8")
    sections = _sections(text)
    for name in ("behaviour", "probes", "lens", "compare_text", "erasure"):
        assert CONTROL in sections[name] and sections[name].count("What the controls show:") == 1, name
    stats = json.loads((out / "behave" / "stats.json").read_text())
    kappa = {frozenset((k["a"], k["b"])): k["value"] for k in stats["sets"]["sentiment"]["kappa"]}
    behaviour = sections["behaviour"]
    assert "κ with tiny-llama" in behaviour and "swap: κ with clean" in behaviour
    assert (f"on sentiment, κ with tiny-llama is {_two(kappa[frozenset((CONTROL, 'tiny-llama'))])} for the control "
            f"{CONTROL} and {_two(kappa[frozenset(('tiny-ultravox', 'tiny-llama'))])} for tiny-ultravox") in behaviour
    swap = next(r for r in stats["ablations"] if (r["system"], r["ablation"]) == ("tiny-ultravox", "swap"))
    assert f"under swap tiny-ultravox's κ with its own clean answers is {_two(swap['kappa_with_clean'])}" in behaviour
    lens = [json.loads((root / "lens" / "sentiment.json").read_text()) for root in (out / "controls" / CONTROL, out)]
    best = [max(e["precision"]["value"] for e in report["layers"]) for report in lens]
    assert f"the lens reads {best[0]:.2f} at the control {CONTROL}'s best layer" in sections["lens"]
    assert f"and {best[1]:.2f} at tiny-ultravox's" in sections["lens"]
    rows = [json.loads((root / "erasure" / "sweep.json").read_text())["rows"] for root in
            (out / "controls" / CONTROL, out)]
    text_delta = [next(r["delta"] for r in sweep if r["concept"] == "text") for sweep in rows]
    assert (f"erasing text changes the control {CONTROL}'s accuracy by {text_delta[0]:+.2f} and tiny-ultravox's by "
            f"{text_delta[1]:+.2f}") in sections["erasure"]
    assert "of the raw variance" in sections["erasure"] and "random-var" in sections["erasure"]
    compared = [json.loads((root / "compare_text" / "compare_text.json").read_text())["layers"]
                for root in (out / "controls" / CONTROL, out)]
    layer, cka, chance = max(((r["layer"], r["cka"], r["cka_shuffled"]) for r in compared[0]),
                             key=lambda r: r[1] - r[2])
    there = next(r["cka"] for r in compared[1] if r["layer"] == layer)
    assert (f"the control {CONTROL} reads CKA {cka:.2f} at layer {layer} (chance {chance:.2f}), tiny-ultravox reads "
            f"{there:.2f} there") in sections["compare_text"]
    assert re.search(rf"CTC text decodability \(1 − CER\) peaks at [0-9.n/a-]+ in the control {CONTROL}",
                     sections["probes"])


def test_check_report_passes_the_report_and_fails_a_page_with_a_cdn_or_an_empty_figure(study, tmp_path) -> None:
    out, _ = study
    check = load_script("check_report")
    assert check.main([str(out / "report.html"), "--browser", "none"]) == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    broken = tmp_path / "report.html"
    broken.write_text(text.replace("<head>", '<head><script src="https://cdn.plot.ly/plotly.js"></script>', 1),
                      encoding="utf-8")
    assert check.main([str(broken), "--browser", "none"]) == 1
    broken.write_text(re.sub(r'(Plotly\.newPlot\(\s*"figure-1",\s*)\[.*?\],\s*\{', r"\1[], {", text, count=1,
                             flags=re.S), encoding="utf-8")
    assert check.main([str(broken), "--browser", "none"]) == 1
    assert check.main([str(tmp_path / "missing.html"), "--browser", "none"]) == 2


def test_a_rerun_reuses_every_stage_and_another_plan_is_refused(study, asr) -> None:
    out, _ = study
    predictions = {p: p.stat().st_mtime_ns for p in (out / "behave").rglob("*.jsonl")}
    again = run_study(tiny_plan(asr), out)
    assert all(r.skipped for r in again if r.stage != "report")
    assert {p: p.stat().st_mtime_ns for p in (out / "behave").rglob("*.jsonl")} == predictions
    with pytest.raises(InterpError, match="snrs"):
        run_study(tiny_plan(asr, snrs=[5.0]), out)
    with pytest.raises(InterpError, match="unknown stage 'nope'"):
        run_study(tiny_plan(asr), out, stages=["nope"])
    with pytest.raises(InterpError, match="analysis set 'topic' is not built"):
        run_study(tiny_plan(asr, analysis_sets=["topic"]), out)
    with pytest.raises(InterpError, match="ablation 'mute'"):
        run_study(tiny_plan(asr, ablations=["mute"]), out)
    with pytest.raises(InterpError, match="another model than the speech model"):
        run_study(tiny_plan(asr, controls=["tiny-ultravox"]), out)
    with pytest.raises(InterpError, match="unknown concept 'txt'"):
        run_study(tiny_plan(asr, concepts=["txt"]), out)
    with pytest.raises(InterpError, match="erasure_ranks"):
        run_study(tiny_plan(asr, erasure_ranks=[0]), out)


def test_a_study_made_with_another_projector_is_refused(tmp_path, monkeypatch, asr) -> None:
    """mini-ultravox's projector changes under the same name when it is retrained: plan.json records its
    fingerprint, and a folder made with other weights (or before they were recorded) is not reused."""
    import interp.models.mini as mini

    plan, out = tiny_plan(asr, speech_model="mini-ultravox"), tmp_path / "demo"
    run_study(plan, out, stages=["report"])  # the one stage that runs on an empty folder
    recorded = json.loads((out / "plan.json").read_text(encoding="utf-8"))["weights"]
    assert recorded == {"mini-ultravox": mini.weights_of("mini-ultravox")}
    shipped = mini.weights_of
    monkeypatch.setattr(mini, "weights_of", lambda name, **kw: shipped(name, **kw) and {"projector": "v-next"})
    with pytest.raises(InterpError, match=r"made with weights .*sha256.*, not .*v-next.*choose another --out"):
        run_study(plan, out, stages=["report"])
    monkeypatch.setattr(mini, "weights_of", shipped)
    older = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    del older["weights"]
    (out / "plan.json").write_text(json.dumps(older), encoding="utf-8")
    with pytest.raises(InterpError, match="made with weights None"):
        run_study(plan, out, stages=["report"])


def test_demo_command_refuses_an_unknown_stage_in_one_line(tmp_path) -> None:
    result = run_cli("demo", "--out", tmp_path / "d", "--stages", "sets,nope")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "unknown stage 'nope'" in result.stderr
    assert not (tmp_path / "d").exists()


def test_the_study_command_runs_a_plan_file_and_reuses_what_the_same_plan_made(study, tmp_path, asr) -> None:
    """`interp study --plan FILE` reads the plan the library ran: every finished stage of that folder is reused
    (a plan that differed in any field would be refused), and the stage table is printed."""
    out, _ = study
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(tiny_plan(asr).to_dict()), encoding="utf-8")
    result = run_cli("study", "--plan", plan_file, "--out", out)
    assert result.returncode == 0, result.stderr
    for stage in STAGES[:-1]:
        assert re.search(rf"^{stage} +[0-9.]+  \(reused\)$", result.stdout, flags=re.M), result.stdout
    assert f"report: {out / 'report.html'}" in result.stdout


def test_a_toml_plan_reads_as_the_same_plan_and_a_bad_key_is_one_line(tmp_path, asr) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text('speech_model = "tiny-ultravox"\ncascade = "tiny-llama"\nextra_systems = []\n'
                         'noisy_sets = ["sentiment"]\nsnrs = [10.0, 0.0]\nanalysis_sets = ["sentiment"]\n'
                         'concepts = ["text", "random", "random-var"]\nengine = "espeak"\n'
                         f'controls = ["disguise:asr={asr},llm=tiny-llama"]\nablations = ["swap", "silence"]\n'
                         'benchmarks = { sst2 = 6 }\n\n[suites]\nsentiment = 8\npitch = 6\n', encoding="utf-8")
    assert load_plan(plan_file) == tiny_plan(asr)
    (tmp_path / "bad.json").write_text(json.dumps({"speech_modle": "tiny-ultravox"}), encoding="utf-8")
    result = run_cli("study", "--plan", tmp_path / "bad.json", "--out", tmp_path / "s")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "unknown key 'speech_modle'" in result.stderr and "speech_model" in result.stderr
    assert not (tmp_path / "s").exists()
