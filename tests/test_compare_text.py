"""Speech vs text inside one LLM (interp.compare_text): linear CKA against its definition and invariances, a
planted case built from arrays (identical states on both sides, and a shuffled control), the text side against
HF's hidden states, and `interp compare-text` end to end on tiny-ultravox, with its refusals."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from activations.format import AUDIO, TEXT
from interp.compare_text import (
    align_words,
    cross_modal_probe,
    linear_cka,
    shuffled_cka,
    split_items,
    text_llm_of,
    transcript_tokens,
    word_spans,
)
from interp.compare_text.text_side import _offsets
from interp.data.audio import SAMPLE_RATE
from interp.data.manifest import Item, Source, Speech, Word
from interp.errors import InterpError
from interp.models.mini import load_model
from probes.targets import bag_of_characters
from tests.helpers import run_cli


def _cka_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = XXᵀ, L = YYᵀ and the centring matrix H (eq. 3-4)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, m = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.trace(k @ m) / np.sqrt(np.trace(k @ k) * np.trace(m @ m)))


@pytest.mark.parametrize("shape", [(30, 5, 7), (10, 40, 24)], ids=["n>d", "n<d"])
def test_cka_equals_its_definition(shape) -> None:
    n, d1, d2 = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d1))
    y = x[:, :1] @ rng.normal(size=(1, d2)) + rng.normal(size=(n, d2))
    assert linear_cka(x, y) == pytest.approx(_cka_by_definition(x, y), abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


def test_cka_is_invariant_to_rotation_and_scale_and_low_for_unrelated_data() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8)) + 5.0
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 3.7 * x - 2.0) == pytest.approx(1.0, abs=1e-10)
    unrelated = [linear_cka(rng.normal(size=(50, 8)), rng.normal(size=(50, 8))) for _ in range(20)]
    assert max(unrelated) < 0.5  # measured: mean 0.133, max 0.173
    wide = rng.normal(size=(20, 500))  # few rows against the width: unrelated data is far from 0, hence the baseline
    assert linear_cka(wide, rng.normal(size=(20, 500))) > 0.7  # measured 0.958
    assert shuffled_cka(wide, wide @ np.linalg.qr(rng.normal(size=(500, 500)))[0]) > 0.7  # measured 0.957
    stretched = x.copy()
    stretched[:, 0] *= 10.0  # an anisotropic map is not an invariance
    assert linear_cka(x, stretched) < 0.99  # measured 0.375
    assert np.isnan(linear_cka(np.ones((5, 3)), x[:5]))
    with pytest.raises(InterpError, match="paired rows"):
        linear_cka(x, x[:10])


_VOCAB = ("the", "movie", "was", "wonderful", "service", "terrible", "camera", "felt", "painful", "brilliant",
          "story", "cold", "warm", "team", "won", "cup", "chip", "report", "shares", "rose")


def _item(index: int, words: list[str]) -> Item:
    """An item whose word j is spoken over [0.3 j, 0.3 j + 0.25) s."""
    timed = tuple(Word(w, 0.3 * j, 0.3 * j + 0.25) for j, w in enumerate(words))
    return Item(id=f"p-{index:02d}", task="sentiment", audio=f"audio/p-{index:02d}.wav", sample_rate=SAMPLE_RATE,
                duration=0.3 * len(words), transcript=" ".join(words).capitalize() + ".",
                choices=("negative", "positive"), label=0, source=Source("planted", "test", str(index)),
                speech=Speech(kind="tts"), words=timed)


def _planted(n_items: int = 16, d: int = 24, seed: int = 0):
    """Items, audio rows (3 rows of 0.1 s per word, the last a text row of the prompt) and text rows (a token
    per word, long words in two), where every row of a word holds that word's state: a linear map of its bag of
    characters plus noise, identical on both sides."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(28, d))
    state = {w: bag_of_characters(w) @ mix + 0.3 * rng.normal(size=d) for w in _VOCAB}
    items, audio, text, a_rows, t_rows, offsets = [], [], [], [], [], [0]
    for index in range(n_items):
        words = list(rng.choice(_VOCAB, size=5, replace=False))
        item = _item(index, words)
        items.append(item)
        for j, w in enumerate(words):
            for k in range(3):
                a_rows.append((index, AUDIO, 0.3 * j + 0.1 * k, 0.3 * j + 0.1 * (k + 1)))
                audio.append(state[w])
        a_rows.append((index, TEXT, np.nan, np.nan))
        audio.append(rng.normal(size=d) * 100)  # a prompt row: never a word's
        for w, (a, b) in zip(words, word_spans(item.transcript, item.words)):
            cuts = [(a, b)] if len(w) < 6 else [(a, a + 3), (a + 3, b)]
            t_rows.extend(cuts)
            text.extend([state[w]] * len(cuts))
        offsets.append(len(t_rows))
    table = dict(zip(("item", "kind", "t_start", "t_end"), map(np.array, zip(*a_rows))))
    table["item"] = table["item"].astype(np.int64)
    spans = np.array(t_rows)
    return items, table, np.array(audio), np.array(offsets), {"char_start": spans[:, 0], "char_end": spans[:, 1]}, \
        np.array(text)


def test_planted_identical_states_give_cka_one_and_equal_probes_and_shuffling_breaks_them() -> None:
    items, table, audio_rows, offsets, text_table, text_rows = _planted()
    alignment = align_words(items, table, offsets, text_table)
    assert len(alignment.words) == 80 and alignment.n_items == 16
    assert alignment.skipped == {"not_in_transcript": 0, "no_audio_rows": 0, "no_text_tokens": 0}
    x, y = alignment.audio @ audio_rows, alignment.text @ text_rows
    assert np.abs(x - y).max() < 1e-9
    assert abs(linear_cka(x, y) - 1.0) <= 1e-6
    targets = np.stack([bag_of_characters(w) for w in alignment.words])
    test = split_items(16, 0.25, 0)[alignment.word_item]
    probe = cross_modal_probe(y, x, targets, alignment.word_item, test, n_folds=4, seed=0)
    assert probe.text_to_audio == pytest.approx(probe.text_to_text, abs=1e-9)
    assert probe.text_to_audio_centred == pytest.approx(probe.text_to_text, abs=1e-9)
    assert probe.text_to_text > 0.8  # measured 0.984
    shuffled = x[np.random.default_rng(1).permutation(len(x))]
    assert linear_cka(shuffled, y) < 0.5  # measured 0.079
    assert shuffled_cka(x, y) < 0.5  # measured 0.079
    control = cross_modal_probe(y, shuffled, targets, alignment.word_item, test, n_folds=4, seed=0)
    assert control.text_to_audio < 0.2 < probe.text_to_audio  # measured -1.006 against 0.984


def test_alignment_counts_what_it_leaves_out() -> None:
    """A word absent from the transcript, a word past the audio rows, a word between tokens: each counted."""
    item = _item(0, ["the", "movie", "was"])
    item = replace(item, words=(*item.words, Word("hello", 0.0, 0.1), Word("again", 0.9, 0.9)),
                   transcript="The movie was again.")
    table = {"item": np.zeros(6, dtype=np.int64), "kind": np.full(6, AUDIO), "t_start": np.arange(6) * 0.15,
             "t_end": np.arange(1, 7) * 0.15}
    text = {"char_start": np.array([0, 4]), "char_end": np.array([3, 9])}  # "The", "movie"; "was" has no token
    alignment = align_words([item], table, np.array([0, 2]), text)
    assert alignment.words == ("the", "movie")
    assert alignment.skipped == {"not_in_transcript": 1, "no_audio_rows": 1, "no_text_tokens": 1}
    assert np.allclose(alignment.audio.sum(axis=1), 1.0) and np.allclose(alignment.text.sum(axis=1), 1.0)
    assert alignment.audio[0].nonzero()[1].tolist() == [0, 1]  # rows [0, .15) and [.15, .3) overlap [0, .25)


def test_split_items_holds_out_whole_items() -> None:
    test = split_items(10, 0.25, 0)
    assert test.sum() == 2  # round(2.5) = 2
    assert split_items(2, 0.9, 0).sum() == 1
    with pytest.raises(InterpError, match="at least 2 items"):
        split_items(1, 0.5, 0)


@pytest.fixture(scope="module")
def tiny_llm():
    return text_llm_of(load_model("tiny-ultravox"))


def test_text_side_rows_are_the_llms_hidden_states_at_the_transcripts_tokens(tiny_llm) -> None:
    from interp.compare_text.text_side import _run

    prompt, transcript = "<|audio|>\nIs the sentiment positive or negative?", "The movie was wonderful."
    ids, rows = transcript_tokens(tiny_llm, prompt, transcript)
    assert ids == tiny_llm.prompt_ids(transcript, prompt)  # exactly what the cascade feeds the LLM
    assert rows[0, 2] == 0 and rows[-1, 3] == len(transcript)
    assert tiny_llm.tokenizer.decode(rows[:, 0]).strip() == transcript
    assert [ids[p] for p in rows[:, 1]] == rows[:, 0].tolist()
    states = _run(tiny_llm, ids, rows[:, 1], ["llm.layers.0", "llm.layers.1"])
    with torch.no_grad():
        hidden = tiny_llm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in (0, 1):
        assert np.abs(states[f"llm.layers.{layer}"] - hidden[layer + 1][0, rows[:, 1]].numpy()).max() <= 1e-5


def test_slow_tokenizer_offsets_come_from_decoded_prefixes(tiny_llm) -> None:
    class Slow:
        def __init__(self, fast):
            self.fast = fast

        def __call__(self, text, **kwargs):
            if kwargs.get("return_offsets_mapping"):
                raise NotImplementedError("slow tokenizer")
            return self.fast(text, **kwargs)

        def decode(self, ids, **kwargs):
            return self.fast.decode(ids, **kwargs)

    text = "Review: the movie was wonderful.\nAnswer:"
    ids, spans = _offsets(Slow(tiny_llm.tokenizer), text)
    assert ids == tiny_llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "".join(text[a:b] for a, b in spans) == text


def test_text_llm_of_a_cascade_is_refused_in_one_line(tiny_llm) -> None:
    from interp.models.cascade import Cascade

    assert text_llm_of(tiny_llm) is tiny_llm
    with pytest.raises(InterpError, match="no language model of its own") as error:
        text_llm_of(Cascade(None, tiny_llm, name="tiny-cascade"))
    assert "\n" not in str(error.value)


def test_compare_text_end_to_end_on_tiny_ultravox(tiny_cache, sentiment_set, tmp_path) -> None:
    out = tmp_path / "cmp"
    result = run_cli("compare-text", "--cache", tiny_cache, "--data", sentiment_set, "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "compare_text.json").read_text())
    assert [row["layer"] for row in report["layers"]] == [0, 1, 2]
    assert report["n_items"] == 2 and report["n_words"] >= 4 and report["text_llm"] == "tiny-ultravox:llm"
    assert report["provenance"]["command"] == "interp compare-text"
    for row in report["layers"]:
        numbers = [row["cka"], row["cka_shuffled"], *row["probe"].values()]
        assert all(v is not None and np.isfinite(v) for v in numbers), row
        assert 0.0 <= row["cka"] <= 1.0 + 1e-9 and row["n_words"] == report["n_words"]
    html = (out / "compare_text.html").read_text()
    assert "Plotly.newPlot" in html and len(html) > 1_000_000 and "<script src=" not in html  # plotly.js inlined
    states = out / "text_states.h5"
    stamp = states.stat().st_mtime_ns
    again = run_cli("compare-text", "--cache", tiny_cache, "--data", sentiment_set, "--out", out, "--layers", "1")
    assert again.returncode == 0, again.stderr
    assert states.stat().st_mtime_ns == stamp  # the text side was reused, not recomputed
    assert json.loads((out / "compare_text.json").read_text())["layers"][0]["cka"] == report["layers"][1]["cka"]


@pytest.mark.parametrize("extra, message", [(("--layers", "7"), "not in this cache"),
                                            (("--model", "tiny-qwen2-audio"), "was made with 'tiny-ultravox'")])
def test_compare_text_refuses_in_one_line(tiny_cache, sentiment_set, tmp_path, extra, message) -> None:
    result = run_cli("compare-text", "--cache", tiny_cache, "--data", sentiment_set, "--out", tmp_path, *extra)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and message in result.stderr

