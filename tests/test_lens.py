"""The logit lens: last layer = the model's logits, the norm is the model's own module, bag-of-tokens precision on
a hand-made example, the implicit cascade's text and predictions, and the `interp lens` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from activations import ActivationCache, CacheHeader, CacheWriter, ItemMeta, ItemRows
from activations.extract import extract, plan_extraction
from interp.behavior import read_predictions, read_sidecar, run_summary, run_system
from interp.data.manifest import SpokenSet
from interp.errors import InterpError
from interp.lens import (
    TokenNormalizer,
    implicit_cascade,
    lens_report,
    lens_text,
    logit_lens,
    precision_figure,
    score_lens,
    strip_figure,
    token_score,
)
from interp.models.implicit_cascade import ImplicitCascade, implicit_cascade_llm
from interp.models.mini import load_model
from interp.sites import parse_layers
from interp.task_prompts import choose, task_prompt
from interp.text_metrics import normalize_transcript, word_error_rate
from tests.helpers import run_cli

ADAPTERS = ["tiny-ultravox", "tiny-qwen2-audio", "tiny-phi4mm"]


def _prompt(item):
    return task_prompt(item.task).for_item(item)


def _extract(model, spoken, out, spec="llm.layers.*", **kwargs):
    plan = plan_extraction(model, spec, kwargs.pop("positions", "audio"))
    return extract(model, spoken, out, plan=plan, prompt_for=_prompt, dtype="float32", **kwargs)


@pytest.fixture(scope="module")
def spoken(sentiment_set) -> SpokenSet:
    return SpokenSet.open(sentiment_set)


@pytest.fixture(scope="module")
def tiny_cache(spoken, tmp_path_factory) -> Path:
    """tiny-ultravox, every layer, audio rows of all 12 items, float32."""
    out = tmp_path_factory.mktemp("lens") / "tiny-cache"
    _extract(load_model("tiny-ultravox"), spoken, out)
    return out


def _model_topk(model, spoken, items, table, k):
    """Top-k of the model's own logits at each item's cached audio positions, rows in cache order."""
    batch = model.prepare([spoken.load_audio(item) for item in items], [_prompt(item) for item in items])
    logits = model.logits(batch)
    rows = torch.cat([logits[i, torch.from_numpy(table["pos"][table["item"] == i]).long()] for i in range(len(items))])
    return torch.topk(rows, k=k, dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# the lens


@pytest.mark.parametrize("name", ADAPTERS)
def test_last_layer_lens_equals_the_models_logits(name, spoken, tmp_path) -> None:
    """At the last layer, final_norm + unembed of the cached float32 rows = model.logits at those positions; the
    unembedding never sees more than chunk_rows rows at once."""
    model = load_model(name)
    items = spoken.items[:3]
    _extract(model, spoken, tmp_path / "c", limit=3)
    cache = ActivationCache.open(tmp_path / "c")
    last = max(int(s.rsplit(".", 1)[1]) for s in cache.sites)
    seen: list[int] = []
    handle = model.unembed.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        result = logit_lens(cache, [last], model=model, top_k=5, chunk_rows=7)
    finally:
        handle.remove()
    assert seen and max(seen) <= 7 and sum(seen) == result.rows
    values, ids = _model_topk(model, spoken, items, cache.row_table(), 5)
    assert result.rows == ids.shape[0] > 0
    assert np.array_equal(result.layers[last].ids, ids.numpy())
    assert np.abs(result.layers[last].logits - values.numpy()).max() <= 1e-4


def test_the_norm_is_the_models_module(tiny_cache) -> None:
    """The lens applies the model's own RMSNorm (its eps and weight; the weight is perturbed here so it matters);
    norm=False unembeds the raw rows, which changes the top-1 tokens."""
    model = load_model("tiny-ultravox")
    norm = model.final_norm
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.2, 3.0, norm.weight.numel()))
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    assert eps is not None
    cache = ActivationCache.open(tiny_cache)
    x = torch.from_numpy(cache.read("llm.layers.1")[cache.row_table()["kind"] == 0])
    manual = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight
    with torch.no_grad():
        values, ids = torch.topk(model.unembed(manual), k=3, dim=-1)
        raw_values, raw_ids = torch.topk(model.unembed(x), k=3, dim=-1)
    with_norm = logit_lens(cache, [1], model=model, top_k=3, chunk_rows=64)
    assert np.array_equal(with_norm.layers[1].ids, ids.numpy())
    assert np.abs(with_norm.layers[1].logits - values.numpy()).max() <= 1e-4
    without = logit_lens(cache, [1], model=model, top_k=3, chunk_rows=64, norm=False)
    assert np.array_equal(without.layers[1].ids, raw_ids.numpy())
    assert np.abs(without.layers[1].logits - raw_values.numpy()).max() <= 1e-4
    assert (without.layers[1].top1 != with_norm.layers[1].top1).any()


def test_parse_layers() -> None:
    available = [0, 1, 2, 5, 6, 7]
    assert parse_layers("all", available) == available
    assert parse_layers(None, available) == available
    assert parse_layers("7,0,5-6,llm.layers.1", available) == [0, 1, 5, 6, 7]
    for bad, message in (("1-x", "cannot read"), ("6-5", "backwards"), ("3", "0-2,5-7"), (",", "no layer")):
        with pytest.raises(InterpError, match=message):
            parse_layers(bad, available)
    with pytest.raises(InterpError, match="llm.layers"):
        parse_layers("all", [])


# ---------------------------------------------------------------------------------------------------------------
# bag-of-tokens precision


class _FakeTokenizer:
    """A tokenizer with a known vocabulary: greedy longest match over the pieces, a space written as `Ġ`;
    decoding joins pieces and turns `Ġ` into a space but leaves SentencePiece's `▁` as it is."""

    PIECES = ["<|endoftext|>", "<|im_start|>", "Ġthe", "the", "ĠThe", "▁movie", "Ġmovie", "Ġwas", ",", "!!", "Ġ",
              "Ġgreat", "ĠGRE", "AT", "!", "Ġdog", "Ġ...", "Ġ42", "The"]
    all_special_ids = [0, 1]

    def __len__(self) -> int:
        return len(self.PIECES)

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) -> str:
        return "".join(self.PIECES[i] for i in ids).replace("Ġ", " ")

    def __call__(self, text, add_special_tokens=False):
        text, ids, i = text.replace(" ", "Ġ"), [], 0
        while i < len(text):
            length, best = max((len(p), k) for k, p in enumerate(self.PIECES)
                               if k not in self.all_special_ids and text.startswith(p, i))
            ids.append(best)
            i += length
        return {"input_ids": ids}


def test_precision_on_a_hand_made_example() -> None:
    """Transcript "The movie was GREAT, 42!" -> reference tokens {the, movie, was, gre, at, great, 42} (as written:
    The Ġmovie Ġwas ĠGRE AT , Ġ42 !; lower-cased: ... Ġgreat ...); recall denominator (' ' + transcript, distinct,
    normalised): the movie was gre at 42."""
    tok = _FakeTokenizer()
    normalizer = TokenNormalizer(tok)
    assert tok("The movie was GREAT, 42!")["input_ids"] == [18, 6, 7, 12, 13, 8, 17, 14]
    assert normalizer.reference("The movie was GREAT, 42!") == {"the", "movie", "was", "gre", "at", "great", "42"}
    assert normalizer.transcript_tokens("The movie was GREAT, 42!") == ["the", "movie", "was", "gre", "at", "42"]
    # top-1 per audio row: the, the (repeat), ▁movie (marker), <|endoftext|> (special), "," and "!!" (punctuation),
    # "Ġ" (empty), dog (not in the transcript), The (case), "Ġ..." (punctuation), great (found via lower case),
    # 999 (beyond the vocabulary)
    top1 = [2, 2, 5, 0, 8, 9, 10, 15, 4, 16, 11, 999]
    assert normalizer.tokens(top1) == ["the", "the", "movie", None, None, None, None, "dog", "the", None, "great", None]
    score = token_score(top1, "The movie was GREAT, 42!", normalizer)
    assert (score.kept, score.found, score.reference) == (6, 5, 6)
    assert score.precision == pytest.approx(5 / 6)
    assert score.recall == pytest.approx(2 / 6)  # the, movie
    empty = token_score([0, 8, 9], "The movie", normalizer)
    assert math.isnan(empty.precision) and empty.recall == 0.0 and empty.kept == 0


def test_normalisation_with_a_real_byte_level_tokenizer() -> None:
    from interp.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    normalizer = TokenNormalizer(tok)
    ids = tok(" The movie, i loved it!")["input_ids"]
    assert [normalizer.token(i) for i in ids if normalizer.token(i)] == ["t", "he", "movie", "i", "loved", "it"]
    assert all(normalizer.token(i) is None for i in tok.all_special_ids)
    assert normalizer.token(tok.convert_tokens_to_ids(",")) is None


def test_lens_text_collapses_repeats_and_drops_non_words() -> None:
    normalizer = TokenNormalizer(_FakeTokenizer())
    # the the the(no space) , movie movie <special> great great dog the
    assert lens_text([2, 2, 3, 8, 6, 6, 0, 11, 11, 15, 2], normalizer) == "the movie great dog the"
    assert lens_text([0, 8, 9, 10], normalizer) == ""


def test_scores_report_and_figures(tiny_cache) -> None:
    model = load_model("tiny-ultravox")
    result = logit_lens(tiny_cache, "1-2", model=model, top_k=2)
    normalizer = TokenNormalizer(model.tokenizer)
    scores = score_lens(result, normalizer, n_boot=200, seed=3)
    for layer in (1, 2):
        values = [token_score(result.layers[layer].top1[result.item_rows(i)], meta.transcript, normalizer).precision
                  for i, meta in enumerate(result.items)]
        defined = [v for v in values if not math.isnan(v)]
        assert scores.layers[layer].precision.value == pytest.approx(np.mean(defined))
        assert scores.layers[layer].precision.low <= scores.layers[layer].precision.value
        assert scores.layers[layer].n_items == len(defined)
    report = lens_report(result, scores, normalizer, strip_items=2)
    json.dumps(report, allow_nan=False)
    assert [entry["layer"] for entry in report["layers"]] == [1, 2]
    strip = report["strips"][0]
    assert strip["transcript"] == result.items[0].transcript
    assert len(strip["layers"]["2"]["tokens"]) == len(strip["pos"]) == len(result.item_rows(0))
    assert len(precision_figure(report).data) == 4
    assert result.items[0].transcript in strip_figure(report).layout.annotations[0].text


# ---------------------------------------------------------------------------------------------------------------
# the implicit cascade


def _lines(path: Path) -> list[dict]:
    """The predictions file's lines as written."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_implicit_cascade_writes_predictions(tiny_cache, spoken, tmp_path) -> None:
    """The harness runs the implicit cascade like any system: each line holds the lens text the text LLM read,
    the answer is the LLM's batch-calibrated choice on that text, and the sidecar records layer, cache and input."""
    model = load_model("tiny-ultravox")
    result = logit_lens(tiny_cache, [2], model=model)
    normalizer = TokenNormalizer(model.tokenizer)
    llm = implicit_cascade_llm(model)
    assert llm.model is model.model.language_model
    system = implicit_cascade(result, spoken, layer=2, llm=llm, normalizer=normalizer)
    assert isinstance(system, ImplicitCascade) and system.name == "implicit-cascade-L2"
    path = run_system(system, system.restrict(spoken), tmp_path / "run", system_name=system.name, calibration="batch")
    assert path == tmp_path / "run" / "implicit-cascade-L2" / f"{spoken.root.name}.jsonl"
    lines = _lines(path)
    assert [line["id"] for line in lines] == [item.id for item in spoken.items]
    scores = np.array([line["scores"] for line in lines])
    assert [line["prediction"] for line in lines] == choose(scores, calibration="batch").tolist()
    assert all(line["calibration"] == "batch" for line in lines)
    for index, line in enumerate(lines):
        assert line["lens_text"] == lens_text(result.layers[2].top1[result.item_rows(index)], normalizer)
        assert line["correct"] == (line["prediction"] == spoken.items[index].label)
    assert scores[0] == pytest.approx(llm.score_choices(lines[0]["lens_text"], _prompt(spoken.items[0]),
                                                        list(spoken.items[0].choices)))
    assert len(read_predictions(path)) == len(spoken.items)
    sidecar = read_sidecar(path.with_suffix(".json"))
    assert sidecar["status"] == "done" and sidecar["config"]["input"] == "logit-lens text"
    described = sidecar["config"]["system"]
    assert (described["class"], described["layer"], described["cache"]) == ("ImplicitCascade", 2, str(tiny_cache))
    assert run_summary(tmp_path / "run")[0]["items"] == len(spoken.items)
    with pytest.raises(InterpError, match="Ultravox"):
        implicit_cascade_llm(load_model("tiny-qwen2-audio"))


def test_implicit_cascade_scores_transcription_against_the_real_transcript(tiny_cache, spoken, tmp_path) -> None:
    """A transcribe item is answered from the lens text but scored against the item's own transcript."""
    root = tmp_path / "transcribe"
    (root / "audio").mkdir(parents=True)
    records = []
    for item in spoken.items[:4]:
        record = {**item.to_dict(), "task": "transcribe", "choices": [], "label": [item.transcript]}
        (root / item.audio).write_bytes(spoken.audio_path(item).read_bytes())
        records.append(json.dumps(record) + "\n")
    (root / "manifest.jsonl").write_text("".join(records), encoding="utf-8")
    transcribe = SpokenSet.open(root)
    model = load_model("tiny-ultravox")
    result = logit_lens(tiny_cache, [2], model=model)
    system = implicit_cascade(result, transcribe, layer=2, llm=implicit_cascade_llm(model),
                              normalizer=TokenNormalizer(model.tokenizer))
    lines = _lines(run_system(system, transcribe, tmp_path / "run", system_name=system.name))
    words = [len(normalize_transcript(item.transcript).split()) for item in transcribe.items]
    assert [line["ref_words"] for line in lines] == words
    assert [len(normalize_transcript(line["lens_text"]).split()) for line in lines] != words  # the test can tell
    for line, item in zip(lines, transcribe.items):
        assert line["wer"] == pytest.approx(word_error_rate([item.transcript], [line["prediction"]]))
        assert line["correct"] == (normalize_transcript(line["prediction"]) == normalize_transcript(item.transcript))


# ---------------------------------------------------------------------------------------------------------------
# the command


def test_cli_writes_json_html_and_implicit_cascade(tiny_cache, sentiment_set, tmp_path) -> None:
    out = tmp_path / "results" / "lens.json"
    run = tmp_path / "run"
    result = run_cli("lens", tiny_cache, "--out", out, "--layers", "1,2", "--top-k", "3", "--strip-items", "2",
                     "--n-boot", "200", "--implicit-cascade", sentiment_set, "--layer", "2", "--run", run)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [entry["layer"] for entry in report["layers"]] == [1, 2]
    assert {"value", "low", "high", "n"} <= set(report["layers"][0]["precision"])
    assert report["n_items"] == 12 and len(report["strips"]) == 2 and report["top_k"] == 3
    assert report["provenance"]["command"] == "interp lens"
    assert report["implicit_cascade"]["system"] == "implicit-cascade-L2"
    assert len(read_predictions(run / "implicit-cascade-L2" / "sentiment.jsonl")) == 12
    for name in ("lens_precision.html", "lens_strip.html"):
        html = (out.parent / name).read_text()
        assert "plotly" in html and len(html) > 1_000_000  # plotly.js inlined
    assert "precision" in result.stdout


def test_cli_bad_layer_spec_is_one_line(tiny_cache, tmp_path) -> None:
    result = run_cli("lens", tiny_cache, "--layers", "1-x", "--out", tmp_path / "lens.json")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: --layers '1-x'")
    assert not (tmp_path / "lens.json").exists()


def test_cli_cache_from_another_model_is_one_line(tmp_path) -> None:
    """A cache whose rows are 32 wide cannot be read through tiny-ultravox's 48-wide unembedding."""
    header = CacheHeader(model="tiny-ultravox", sites={"llm.layers.0": 32}, dtype="float32", positions="audio",
                         dataset="synthetic")
    with CacheWriter.open(tmp_path / "c", header) as writer:
        writer.add(ItemMeta(id="a", index=0, transcript="hello", label=None, duration=0.32),
                   ItemRows(pos=np.arange(2), kind=np.zeros(2, np.uint8), t_start=np.array([0, 0.16], np.float32),
                            t_end=np.array([0.16, 0.32], np.float32), token_id=np.full(2, -1),
                            sites={"llm.layers.0": np.ones((2, 32), np.float32)}))
    result = run_cli("lens", tmp_path / "c", "--out", tmp_path / "lens.json")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "32 wide" in result.stderr and "48" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# the mini stack


@pytest.mark.slow
def test_mini_ultravox_last_layer_lens_equals_its_logits(spoken, tmp_path) -> None:
    model = load_model("mini-ultravox")
    items = spoken.items[:2]
    _extract(model, spoken, tmp_path / "c", "llm.layers.29", limit=2)
    cache = ActivationCache.open(tmp_path / "c")
    result = logit_lens(cache, [29], model=model, top_k=5, chunk_rows=16)
    values, ids = _model_topk(model, spoken, items, cache.row_table(), 5)
    assert result.rows == ids.shape[0] > 0
    assert (result.layers[29].ids[:, 0] == ids[:, 0].numpy()).all()
    assert np.abs(result.layers[29].logits - values.numpy()).max() <= 1e-4
    normalizer = TokenNormalizer(model.tokenizer)
    assert normalizer.reference("The film was GREAT.") >= {"the", "film", "was", "great", "gre", "at"}
    score = token_score(result.layers[29].top1[result.item_rows(0)], items[0].transcript, normalizer)
    assert 0 <= score.kept <= result.rows
