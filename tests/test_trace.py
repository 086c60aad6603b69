"""interp.trace: nnsight over every system, by site name. A site read in a trace equals the rows `interp extract`
stores; an edit written with nnsight scores as the project's hooks score (zeroing the audio positions, adding a
vector); a LEACE eraser applied in a trace scores as `interp erase eval` does; an unknown site gets one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from activations import ActivationCache
from activations.audio_positions import AudioPositions
from activations.hooks import capture, edit
from interp.data.manifest import SpokenSet
from interp.erasure import apply_eraser, fit_eraser
from interp.errors import InterpError
from interp.models.cascade import Oracle
from interp.models.mini import load_model
from interp.models.prompting import choice_delimiter, continuation_ids
from interp.models.tiny import tiny_text_lm
from interp.task_prompts import task_prompt
from interp.trace import TracedSystem, trace
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEECH = ["tiny-ultravox", "tiny-qwen2-audio", "tiny-phi4mm"]
TOL = 1e-5


def _prompt(item) -> str:
    return task_prompt(item.task).for_item(item)  # the default style, as `interp extract` and `interp behave` ask


@pytest.fixture(scope="module")
def spoken(sentiment_set) -> SpokenSet:
    return SpokenSet.open(sentiment_set)


@pytest.fixture(scope="module")
def ultravox():
    return load_model("tiny-ultravox")


@pytest.fixture(scope="module")
def traced(ultravox) -> TracedSystem:
    return trace(ultravox)


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))).abs().max())


def _hooked_scores(model, changes: dict, audio_positions: bool, source, prompt: str, choices) -> np.ndarray:
    """score_choices with the project's edit hooks (audio positions tracked as erasure tracks them)."""
    sites = model.sites()
    if not audio_positions:
        with edit(sites, changes):
            return model.score_choices(source, prompt, choices)
    with AudioPositions().track(model, sites["llm.embed"].module) as audio, edit(sites, changes, audio=audio):
        return model.score_choices(source, prompt, choices)


# ---------------------------------------------------------------------------------------------------------------
# reading


def test_a_site_saved_in_a_trace_equals_the_rows_interp_extract_stores(tiny_cache, spoken, traced) -> None:
    """The cache holds the audio positions only (docs/cache-format.md); the trace's tensor at the batch's
    audio_mask gives the same rows, at the same positions, for every site."""
    stored = ActivationCache.open(tiny_cache)
    table = stored.row_table()
    assert list(stored.sites) == ["projector", "llm.embed", "llm.layers.0", "llm.layers.1", "llm.layers.2"]
    for row, item in enumerate(spoken.items[:2]):
        with traced.trace(spoken.load_audio(item), _prompt(item)):
            values = traced.values(list(stored.sites))
        mask = traced.batch.audio_mask[0]
        assert np.array_equal(table["pos"][table["item"] == row], mask.nonzero().squeeze(-1).numpy())
        for name, value in values.items():
            rows = value[0, : int(mask.sum())] if name == "projector" else value[0, mask]
            assert _max_diff(rows, stored.read(name, items=[item.id])) <= TOL, name


@pytest.mark.parametrize("name", SPEECH)
def test_every_site_and_the_logits_equal_the_hooks_on_the_same_forward(name, spoken) -> None:
    model = load_model(name)
    traced = trace(model)
    item = spoken.items[0]
    audio, prompt = spoken.load_audio(item), _prompt(item)
    with traced.trace(audio, prompt) as tracer:
        values = traced.values("audio.layers.*,projector,llm.embed,llm.layers.*")
        logits = tracer.result.save()
    batch = model.prepare([audio], [prompt])
    with capture(model.sites(), traced.sites) as hooked:
        reference = model.logits(batch)
    assert torch.equal(logits, reference)
    for site in traced.sites:
        assert torch.equal(values[site], hooked[site]), site


def test_a_cascades_text_llm_is_traced_on_a_transcript_with_its_own_render() -> None:
    llm = tiny_text_lm()
    traced = trace(Oracle(llm))
    text, prompt = "the movie was wonderful", "Is this review positive or negative? <|audio|>"
    assert traced.sites == ["llm.embed", "llm.layers.0", "llm.layers.1", "llm.layers.2"]
    with traced.trace(text, prompt) as tracer:
        h = traced.site("llm.layers.1").value.save()
        logits = tracer.result.save()
    ids = torch.tensor([llm.prompt_ids(text, prompt)])
    with capture(llm.sites(), ["llm.layers.1"]) as hooked, torch.no_grad():
        reference = llm.model(input_ids=ids).logits
    assert torch.equal(traced.batch.input_ids, ids)
    assert torch.equal(h, hooked["llm.layers.1"]) and torch.equal(logits, reference)
    with traced.trace(text, prompt) as tracer:
        site = traced.site("llm.layers.1")
        site.output = torch.zeros_like(site.output)  # nnsight's own spelling reaches the Envoy through the view
        zeroed = tracer.result.save()
    with edit(llm.sites(), {"llm.layers.1": torch.zeros_like}), torch.no_grad():
        assert torch.equal(zeroed, llm.model(input_ids=ids).logits) and not torch.equal(zeroed, logits)


# ---------------------------------------------------------------------------------------------------------------
# editing


@pytest.mark.parametrize("kind", ["zero", "add"])
@pytest.mark.parametrize("name", SPEECH)
def test_an_nnsight_edit_scores_as_the_projects_hooks_do(name, kind, spoken) -> None:
    """Zero the audio positions of llm.layers.1, or add a vector there: the choice scores (prompt pass edited,
    choices continued from its KV cache) and the logits equal those under activations.hooks.edit."""
    model = load_model(name)
    traced = trace(model)
    item = spoken.items[0]
    audio, prompt, choices = spoken.load_audio(item), _prompt(item), list(item.choices)
    d = int(model.unembed.weight.shape[-1])
    vector = torch.randn(d, generator=torch.Generator().manual_seed(0))
    change = torch.zeros_like if kind == "zero" else (lambda x: x + vector)
    scores = traced.score_choices(audio, prompt, choices, intervene=lambda t: t.edit("llm.layers.1", change))
    reference = _hooked_scores(model, {"llm.layers.1": change}, True, audio, prompt, choices)
    assert _max_diff(scores, reference) <= TOL
    assert _max_diff(scores, model.score_choices(audio, prompt, choices)) > 1e-4  # the edit did something
    with traced.trace(audio, prompt) as tracer:
        traced.edit("llm.layers.1", change)
        logits = tracer.result.save()
    batch = model.prepare([audio], [prompt])
    with AudioPositions().track(model, model.sites()["llm.embed"].module) as positions:
        with edit(model.sites(), {"llm.layers.1": change}, audio=positions):
            hooked = model.logits(batch)
    assert _max_diff(logits, hooked) <= TOL


def test_a_text_llm_edit_at_every_position_edits_the_choices_continuation_too() -> None:
    """positions="all" (a text LLM's default) edits every pass, as the hooks do: here a choice has two tokens, so
    score_choices makes a second pass over the prompt's KV cache, and two sites are edited in it."""
    llm = tiny_text_lm()
    traced = trace(Oracle(llm))
    text, prompt, choices = "the movie was wonderful", "Is it positive? <|audio|>", ["yes", "no"]
    ids = continuation_ids(llm.tokenizer, llm.render(prompt, text), choices, delimiter=choice_delimiter(prompt))[1]
    assert any(len(choice) > 1 for choice in ids)
    changes = {"llm.layers.1": lambda x: x + 1.0, "llm.layers.2": lambda x: 0.5 * x}
    scores = traced.score_choices(text, prompt, choices, intervene=lambda t: t.edits(changes))
    assert _max_diff(scores, _hooked_scores(llm, changes, False, text, prompt, choices)) <= TOL
    assert _max_diff(scores, llm.score_choices(text, prompt, choices)) > 1e-4
    with pytest.raises(InterpError, match="reads no audio"):
        with traced.trace(text, prompt):
            traced.edit("llm.layers.1", torch.zeros_like, positions="audio")


def test_a_leace_eraser_in_a_trace_equals_interp_erase_eval(tiny_cache, spoken, sentiment_set, traced, ultravox,
                                                             tmp_path) -> None:
    """An eraser fitted on the extracted cache: `interp erase eval`'s scores (its predictions file) and
    apply_eraser's logits equal those of the same eraser applied in a trace (traced.erase)."""
    eraser = fit_eraser(tiny_cache, spoken, "chars", "llm.layers.0,2")
    assert all(entry["rank"] > 0 for entry in eraser.summary())
    run = tmp_path / "run"
    evaluated = run_cli("erase", "eval", "--model", "tiny-ultravox", "--data", sentiment_set, "--eraser",
                        eraser.save(tmp_path / "chars.safetensors"), "--out", run, "--limit", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    lines = (run / "tiny-ultravox+erase-chars" / f"{sentiment_set.name}.jsonl").read_text().splitlines()
    answered = {line["id"]: line["scores"] for line in map(json.loads, lines)}
    for item in spoken.items[:2]:
        audio, prompt = spoken.load_audio(item), _prompt(item)
        scores = traced.score_choices(audio, prompt, list(item.choices), intervene=lambda t: t.erase(eraser))
        assert _max_diff(scores, answered[item.id]) <= TOL
        assert _max_diff(scores, ultravox.score_choices(audio, prompt, list(item.choices))) > 1e-6
        with traced.trace(audio, prompt) as tracer:
            traced.erase(eraser)
            logits = tracer.result.save()
        with apply_eraser(ultravox, eraser):
            erased = ultravox.logits(ultravox.prepare([audio], [prompt]))
        assert _max_diff(logits, erased) <= TOL


# ---------------------------------------------------------------------------------------------------------------
# refusals and the import quirk


def test_an_unknown_site_gets_one_line_listing_the_known_sites(traced, spoken) -> None:
    item = spoken.items[0]
    with pytest.raises(InterpError) as inside:
        with traced.trace(spoken.load_audio(item), _prompt(item)):
            traced.site("llm.layers.9").value.save()
    message = str(inside.value)
    assert "\n" not in message and "'llm.layers.9'" in message
    assert "audio.layers.0–1, projector, llm.embed, llm.layers.0–2" in message
    with pytest.raises(InterpError, match="known sites are"):
        traced["projektor"]
    with pytest.raises(InterpError, match="opens a block"):
        traced.trace(spoken.load_audio(item), _prompt(item))


def test_parselmouth_still_imports_after_nnsight() -> None:
    """nnsight mounts `.save` on every object, which breaks `import parselmouth` after it; interp.trace repairs
    that even when nnsight came first, and nnsight's `.save` is back afterwards."""
    code = ("import nnsight, interp.trace, numpy, parselmouth\n"
            "parselmouth.Sound(numpy.zeros(1600), 16000).to_pitch()\n"
            "assert 'save' in vars(object)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------------------------
# the real mini stack


@pytest.mark.slow
def test_mini_ultravox_trace_reads_and_edits_as_the_hooks_do(spoken) -> None:
    model = load_model("mini-ultravox")
    traced = trace(model)
    item = spoken.items[0]
    audio, prompt, choices = spoken.load_audio(item), _prompt(item), list(item.choices)
    names = ["audio.layers.3", "projector", "llm.layers.12"]
    with traced.trace(audio, prompt):
        values = traced.values(names)
    with capture(model.sites(), names) as hooked:
        model.logits(model.prepare([audio], [prompt]))
    for name in names:
        assert torch.equal(values[name], hooked[name]), name
    scores = traced.score_choices(audio, prompt, choices,
                                  intervene=lambda t: t.edit("llm.layers.12", torch.zeros_like))
    reference = _hooked_scores(model, {"llm.layers.12": torch.zeros_like}, True, audio, prompt, choices)
    assert _max_diff(scores, reference) <= TOL
