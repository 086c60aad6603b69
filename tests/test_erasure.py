"""LEACE erasure: fits equal concept-erasure's own, erase a planted linear concept on held-out items (and a
random subspace of the same rank does not), hooks touch only audio positions, generation through the KV cache
equals a no-cache loop, files round-trip, and a wrong model is refused with one line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from concept_erasure import LeaceFitter
from sklearn.linear_model import LogisticRegression

from activations import AUDIO, TEXT, ActivationCache, CacheHeader, CacheWriter, ItemMeta, ItemRows
from interp.data.audio import SAMPLE_RATE, write_wav
from interp.data.manifest import MANIFEST, Item, Source, Speech, SpokenSet, Word
from interp.erasure import Eraser, SiteEraser, apply_eraser, concept_labels, fit_eraser
from interp.erasure_eval import evaluate_erasure
from interp.errors import InterpError
from interp.models.tiny import tiny_qwen2_audio, tiny_tokenizer, tiny_ultravox
from probes.targets import bag_of_characters

ROW = 0.1
N_ITEMS, N_TRAIN = 100, 70
D = 48  # tiny-ultravox's LLM width, so erasers fitted here apply to it
VOCAB = ("movie", "terrible", "service", "team", "dog", "shares", "report", "cup")
SITES = {"llm.layers.0": D, "llm.layers.1": D, "llm.layers.2": D}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Synthetic:
    set_root: Path
    cache_path: Path
    word_of_row: np.ndarray  # per cache row: index into ("the",) + VOCAB, -1 silence, -2 text row

    @property
    def cache(self) -> ActivationCache:
        return ActivationCache.open(self.cache_path)

    @property
    def spoken(self) -> SpokenSet:
        return SpokenSet.open(self.set_root)

    def ids(self, part: slice) -> list[str]:
        return [f"utt-{i:03d}" for i in range(N_ITEMS)][part]


def _write(root: Path) -> Synthetic:
    """Items "the w1 w2 …" with word timings on 100 ms rows (gaps of silence), 2 text rows before the audio.
    llm.layers.0 carries the spoken word linearly (a mean per word, anisotropic noise); the others are noise."""
    rng = np.random.default_rng(0)
    set_root, cache_path = root / "set", root / "cache"
    (set_root / "audio").mkdir(parents=True)
    header = CacheHeader(model="tiny-ultravox", sites=dict(SITES), dtype="float32", positions="all",
                         dataset=str(set_root))
    means = 1.5 * rng.standard_normal((len(VOCAB) + 2, D))  # last row: silence
    mix = rng.standard_normal((D, D)) / np.sqrt(D) + np.diag(rng.uniform(0.3, 1.5, D))
    lines, word_of_row = [], []
    with CacheWriter.open(cache_path, header, items_per_shard=16) as writer:
        for i in range(N_ITEMS):
            words = ["the", *rng.choice(VOCAB, size=int(rng.integers(4, 8)))]
            row_word, timings = [], []
            for word in words:
                row_word += [-1] * int(rng.integers(0, 2))
                length = int(rng.integers(2, 4))
                start = len(row_word)
                timings.append(Word(word, round(start * ROW + 0.01, 4), round((start + length) * ROW - 0.01, 4)))
                row_word += [(("the",) + VOCAB).index(word)] * length
            row_word += [-1]
            rows = len(row_word)
            item = Item(id=f"utt-{i:03d}", task="sentiment", audio=f"audio/utt-{i:03d}.wav", sample_rate=SAMPLE_RATE,
                        duration=rows * ROW, transcript=" ".join(words), choices=("negative", "positive"),
                        label=i % 2, source=Source("synthetic", "test", str(i)),
                        speech=Speech(kind="tts", engine="synthetic"), words=tuple(timings))
            write_wav(set_root / item.audio, np.zeros(int(round(rows * ROW * SAMPLE_RATE)), dtype=np.float32))
            word = np.array(row_word)
            signal = means[np.where(word >= 0, word, len(VOCAB) + 1)] + rng.standard_normal((rows, D)) @ mix
            noise = {name: rng.standard_normal((rows + 2, D)) @ mix for name in ("llm.layers.1", "llm.layers.2")}
            noise["llm.layers.1"][2:] += 0.5 * signal
            start = np.concatenate([[np.nan, np.nan], np.arange(rows) * ROW]).astype(np.float32)
            sites = {"llm.layers.0": np.concatenate([rng.standard_normal((2, D)), signal]), **noise}
            writer.add(ItemMeta(item.id, i, item.transcript, None, item.duration), ItemRows(
                pos=np.arange(rows + 2), kind=np.array([TEXT, TEXT] + [AUDIO] * rows), t_start=start,
                t_end=start + np.float32(ROW), token_id=np.array([5, 6] + [-1] * rows),
                sites={name: value.astype(np.float32) for name, value in sites.items()}))
            lines.append(json.dumps(item.to_dict()))
            word_of_row += [-2, -2] + row_word
    (set_root / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Synthetic(set_root, cache_path, np.array(word_of_row))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return _write(tmp_path_factory.mktemp("erasure"))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def text_eraser(synthetic: Synthetic, tokenizer) -> Eraser:
    """The text concept fitted at every site on the training items."""
    return fit_eraser(synthetic.cache, synthetic.spoken, "text", None, tokenizer=tokenizer,
                      items=synthetic.ids(slice(0, N_TRAIN)))


@pytest.fixture(scope="module")
def model():
    return tiny_ultravox()


# ---------------------------------------------------------------------------------------------------------------
# labels and fitting


def test_text_and_chars_labels_follow_word_timings(synthetic: Synthetic, tokenizer) -> None:
    cache, spoken = synthetic.cache, synthetic.spoken
    text = concept_labels(cache, spoken, "text", tokenizer=tokenizer)
    assert not text.keep[synthetic.word_of_row == -2].any() and text.keep[synthetic.word_of_row >= -1].all()
    assert text.z.shape[1] == len(VOCAB) + 2 and text.columns[-1] == "other"
    names = [(("the",) + VOCAB)[w] if w >= 0 else None for w in synthetic.word_of_row]
    for row in np.flatnonzero(text.keep):
        column = text.columns[int(text.z[row].argmax())]
        said = None if names[row] is None else names[row] if names[row] == "the" else " " + names[row]
        expected = "other" if said is None else tokenizer.convert_ids_to_tokens(
            tokenizer(said, add_special_tokens=False)["input_ids"][0])
        assert column == "other" if expected == "other" else column.endswith(":" + expected), (row, column, expected)
    assert text.info["silent_rows"] == int((synthetic.word_of_row == -1).sum())

    chars = concept_labels(cache, spoken, "chars")
    inside = np.flatnonzero(synthetic.word_of_row >= 0)
    for row in inside[:50]:
        np.testing.assert_array_equal(chars.z[row], bag_of_characters(names[row]))
    assert not chars.z[synthetic.word_of_row == -1].any()
    assert chars.info["rows_without_word_timing"] == 0

    few = concept_labels(cache, spoken, "text", tokenizer=tokenizer, text_classes=3)
    assert few.z.shape[1] == 4 and few.z[few.keep].sum(axis=1).max() == 1


def test_streaming_fit_equals_concept_erasure_on_the_whole_matrix(synthetic: Synthetic, tokenizer) -> None:
    cache = synthetic.cache
    for concept in ("text", "boc"):
        eraser = fit_eraser(cache, synthetic.spoken, concept, ["llm.layers.1"], tokenizer=tokenizer, batch_rows=97)
        labels = concept_labels(cache, synthetic.spoken, concept, tokenizer=tokenizer)
        x = torch.from_numpy(cache.read("llm.layers.1")).double()
        reference = LeaceFitter.fit(x[labels.keep], torch.from_numpy(labels.z[labels.keep])).eraser
        site = eraser.sites["llm.layers.1"]
        assert site.rows == int(labels.keep.sum()) and 0 < site.rank <= labels.z.shape[1] - 1
        assert (site(x) - reference(x)).abs().max().item() <= 1e-5
        assert (site.as_leace().P.double() - reference.P).abs().max().item() <= 1e-5


def test_leace_erases_the_concept_on_held_out_items_and_random_of_same_rank_does_not(
        synthetic: Synthetic, text_eraser: Eraser, tokenizer) -> None:
    cache, site = synthetic.cache, "llm.layers.0"
    labels = concept_labels(cache, synthetic.spoken, "text", tokenizer=tokenizer)
    table = cache.row_table()
    train = labels.keep & (table["item"] < N_TRAIN)
    test = labels.keep & (table["item"] >= N_TRAIN)
    assert train.sum() >= 1000
    x = torch.from_numpy(cache.read(site))
    y = labels.z.argmax(axis=1)

    def probe(rows: torch.Tensor) -> float:
        clf = LogisticRegression(max_iter=2000).fit(rows[train].numpy(), y[train])
        return float(clf.score(rows[test].numpy(), y[test]))

    majority = float(np.mean(y[test] == np.bincount(y[train]).argmax()))
    clean = probe(x)
    assert clean >= 0.95
    erased = probe(text_eraser.sites[site](x))
    assert erased <= majority + 0.02, (erased, majority)

    control = fit_eraser(cache, synthetic.spoken, "random", [site], match="text", tokenizer=tokenizer,
                         items=synthetic.ids(slice(0, N_TRAIN)))
    assert control.sites[site].rank == text_eraser.sites[site].rank > 0
    assert probe(control.sites[site](x)) >= clean - 0.02
    raw = fit_eraser(cache, synthetic.spoken, "random", [site], match=5, random_space="raw")
    assert raw.sites[site].rank == 5 and raw.meta["method"] == "random-raw"
    basis = raw.sites[site].proj_left
    torch.testing.assert_close(basis.mT @ basis, torch.eye(5), atol=1e-5, rtol=0)


def test_variance_removed_is_the_drop_in_total_variance_of_the_fitted_rows(synthetic: Synthetic, tokenizer) -> None:
    """Recomputed from the rows themselves (numpy, ddof=1): 1 − total variance after / before, for LEACE and for
    whitened and raw random controls; and it says what rank does not (same rank, different variance)."""
    cache, site = synthetic.cache, "llm.layers.0"
    labels = concept_labels(cache, synthetic.spoken, "text", tokenizer=tokenizer)
    x = torch.from_numpy(cache.read(site)).double()[labels.keep]
    removed = {}
    fits = {"text": ("text", None, "whitened"), "whitened": ("random", "text", "whitened"),
            "raw": ("random", "text", "raw")}
    for name, (concept, match, space) in fits.items():
        eraser = fit_eraser(cache, synthetic.spoken, concept, [site], match=match, random_space=space,
                            tokenizer=tokenizer).sites[site]
        reference = 1 - eraser(x).numpy().var(axis=0, ddof=1).sum() / x.numpy().var(axis=0, ddof=1).sum()
        assert eraser.variance_removed == pytest.approx(reference, abs=1e-6), name
        removed[name] = eraser.variance_removed
    assert removed["text"] > 2 * removed["whitened"] > 0  # the planted words carry most of the variance


def test_describe_reports_rank_and_share_of_d(text_eraser: Eraser) -> None:
    text = text_eraser.describe()
    for entry in text_eraser.summary():
        assert entry["rank"] <= len(VOCAB) + 1 and entry["share"] == pytest.approx(entry["rank"] / D)
        assert entry["site"] in text and f"{entry['share']:.2%}" in text
        assert f"{entry['variance_removed']:.2%}" in text


# ---------------------------------------------------------------------------------------------------------------
# applying to a model


def _forward(model, batch, names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sites, captured, handles = model.sites(), {}, []
    for name in names:
        handles.append(sites[name].module.register_forward_hook(
            lambda module, args, output, name=name: captured.__setitem__(name, output.detach().clone())))
    try:
        return model.logits(batch), captured
    finally:
        for handle in handles:
            handle.remove()


def _batch(model, seconds=(0.9, 1.7)):
    rng = np.random.default_rng(1)
    audio = [0.1 * rng.standard_normal(int(s * SAMPLE_RATE)).astype(np.float32) for s in seconds]
    return model.prepare(audio, ["Review: <|audio|>\nAnswer:"] * len(audio)), audio


def test_rank_zero_eraser_leaves_outputs_bit_identical(synthetic: Synthetic, model) -> None:
    eraser = fit_eraser(synthetic.cache, synthetic.spoken, "pitch", None)  # silent audio: one class, unvoiced
    assert all(entry["rank"] == 0 for entry in eraser.summary())
    batch, _ = _batch(model)
    plain, plain_sites = _forward(model, batch, ["llm.layers.2"])
    with apply_eraser(model, eraser, positions="all"):
        erased, erased_sites = _forward(model, batch, ["llm.layers.2"])
    assert torch.equal(plain, erased) and torch.equal(plain_sites["llm.layers.2"], erased_sites["llm.layers.2"])


def test_only_audio_positions_change_by_default(text_eraser: Eraser, model) -> None:
    batch, _ = _batch(model)
    names = ["llm.layers.0", "llm.layers.2"]
    plain, before = _forward(model, batch, names)
    with apply_eraser(model, text_eraser, sites=["llm.layers.0"]) as active:
        assert active.positions == "audio"
        erased, after = _forward(model, batch, names)
    audio = batch.audio_mask
    first = int(audio[0].nonzero()[0])
    assert torch.equal(plain[:, :first], erased[:, :first])
    assert torch.equal(before["llm.layers.2"][:, :first], after["llm.layers.2"][:, :first])
    # at the hooked site itself, every non-audio position is passed through bit for bit
    assert torch.equal(before["llm.layers.0"][~audio], after["llm.layers.0"][~audio])
    assert (before["llm.layers.0"][audio] - after["llm.layers.0"][audio]).abs().amax(-1).min() > 0
    torch.testing.assert_close(after["llm.layers.0"][audio],
                               text_eraser.sites["llm.layers.0"](before["llm.layers.0"][audio]))
    assert not torch.equal(plain[audio], erased[audio])
    with apply_eraser(model, text_eraser, sites="llm.layers.0", positions="all"):
        _, everywhere = _forward(model, batch, names)
    assert (before["llm.layers.0"][~audio] != everywhere["llm.layers.0"][~audio]).any(-1).all()
    # hooks and wrappers are gone after the block
    assert torch.equal(_forward(model, batch, names)[0], plain)
    assert not {"logits", "prepare", "_encode", "generate", "score_choices"} & set(vars(model))


def test_direct_forward_needs_the_batch_named(text_eraser: Eraser, model) -> None:
    batch, _ = _batch(model)
    with apply_eraser(model, text_eraser) as active:
        reference = model.logits(batch)
        with pytest.raises(InterpError, match="without knowing where the audio is"):
            with torch.no_grad():
                model.model(**batch.inputs)
        with active.batch(batch), torch.no_grad():
            direct = model.model(**batch.inputs).logits
    assert torch.equal(direct, reference)


def test_hooks_learn_the_audio_mask_from_the_adapters_batches_without_wrapping_it(text_eraser: Eraser, model) -> None:
    """Inside the block the adapter's methods are its class's own; a batch it builds is the one the next direct pass
    erases; nothing of the block stays on the instance."""
    before = dict(vars(model))
    batch, audio = _batch(model)
    reference = model.logits(batch)
    with apply_eraser(model, text_eraser) as active:
        assert all(getattr(model, name).__func__ is getattr(type(model), name)
                   for name in ("logits", "prepare", "_encode", "score_choices", "generate"))
        erased = model.logits(batch)
        rebuilt = model.prepare(audio, ["Review: <|audio|>\nAnswer:"] * len(audio))
        with torch.no_grad():
            direct = model.model(**rebuilt.inputs).logits
        assert active.audio is not None
    assert torch.equal(direct, erased) and not torch.equal(erased, reference)
    assert vars(model).keys() == before.keys()


@pytest.fixture(scope="module")
def qwen_model():
    return tiny_qwen2_audio()


def _no_cache_step(model, batch, ids: list[int]) -> torch.Tensor:
    """Next-token logits of the whole sequence (prompt with audio + ids so far), without a KV cache."""
    inputs, new = batch.inputs, torch.tensor([ids], dtype=torch.long)
    if "audio_token_start_idx" in inputs:  # Ultravox: its LLM on the merged embeddings
        lm = model.model.language_model
        embeds = model.model.embed(inputs["input_ids"], inputs["audio_values"], inputs["audio_lens"],
                                   inputs["audio_token_start_idx"], inputs["audio_token_len"])
        sequence = torch.cat([embeds, lm.get_input_embeddings()(new)], dim=1)
        return lm(inputs_embeds=sequence, attention_mask=torch.ones(sequence.shape[:2], dtype=torch.long),
                  use_cache=False).logits[0, -1]
    input_ids = torch.cat([inputs["input_ids"], new], dim=1)
    return model.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       input_features=inputs["input_features"], feature_attention_mask=inputs["feature_attention_mask"],
                       use_cache=False).logits[0, -1]


@pytest.mark.parametrize("which", ["tiny-ultravox", "tiny-qwen2-audio"])
def test_generation_through_the_kv_cache_equals_a_no_cache_loop(which: str, text_eraser: Eraser, request,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter's generate (prefill + cached steps) against a loop that re-runs the whole sequence each step
    with the hooks on: the same greedy tokens and the same logits at every step; erasure changes the logits."""
    model = request.getfixturevalue("model" if which == "tiny-ultravox" else "qwen_model")
    steps = 5
    generation_config = getattr(model.model, "language_model", model.model).generation_config
    monkeypatch.setattr(generation_config, "eos_token_id", None)  # always `steps` tokens
    step_logits: list[torch.Tensor] = []
    handle = model.unembed.register_forward_hook(lambda m, a, out: step_logits.append(out[0, -1].detach().clone()))
    _, audio = _batch(model, seconds=(1.3,))
    prompt = "Review: <|audio|>\nAnswer:"

    def run(eraser: Eraser | None) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        step_logits.clear()
        with apply_eraser(model, eraser) if eraser is not None else _nothing() as active:
            model.generate(audio[0], prompt, max_new_tokens=steps)
            cached = list(step_logits)
            batch, ids, manual = model.prepare(audio, [prompt]), [], []
            with torch.no_grad(), active.batch(batch) if active is not None else _nothing():
                for _ in range(steps):
                    logits = _no_cache_step(model, batch, ids)
                    manual.append(logits)
                    ids.append(int(logits.argmax()))
        return cached, manual, ids

    try:
        cached, manual, ids = run(text_eraser)
        plain, _, _ = run(None)
    finally:
        handle.remove()
    assert len(cached) == steps and [int(c.argmax()) for c in cached] == ids
    for a, b in zip(cached, manual):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(cached, plain))


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------------
# files and refusals


def test_save_load_round_trip(text_eraser: Eraser, tmp_path: Path, model) -> None:
    path = text_eraser.save(tmp_path / "text.safetensors")
    loaded = Eraser.load(path)
    assert loaded.concept == "text" and loaded.digest() == text_eraser.digest()
    assert loaded.summary() == text_eraser.summary() and loaded.describe() == text_eraser.describe()
    for name, site in text_eraser.sites.items():
        for field in ("proj_left", "proj_right", "bias"):
            assert torch.equal(getattr(loaded.sites[name], field), getattr(site, field))
    meta = loaded.meta
    assert meta["model"] == "tiny-ultravox" and meta["cache"]["header_digest"]
    assert meta["sites"]["llm.layers.0"]["d"] == D and meta["default_positions"] == "audio"
    assert "concept-erasure" in meta["versions"] and meta["provenance"]["command"] == "interp erase fit"
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    batch, _ = _batch(model)
    with apply_eraser(model, text_eraser):
        a = model.logits(batch)
    with apply_eraser(model, loaded):
        b = model.logits(batch)
    assert torch.equal(a, b)

    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InterpError, match="not an eraser file"):
        Eraser.load(tmp_path / "other.safetensors")
    with pytest.raises(InterpError, match="no eraser file"):
        Eraser.load(tmp_path / "missing.safetensors")


def _eraser(sites: dict[str, int], rank: int = 2) -> Eraser:
    out = {}
    for name, d in sites.items():
        basis, _ = torch.linalg.qr(torch.randn(d, rank, generator=torch.Generator().manual_seed(0)))
        out[name] = SiteEraser(basis, basis.mT.contiguous(), torch.zeros(d), rank=rank)
    return Eraser("test", out, {"model": "elsewhere"})


def test_refuses_a_model_with_other_dims_or_missing_sites(model) -> None:
    for eraser, pattern in ((_eraser({"llm.layers.0": 32}), "is 48 wide but the eraser was fitted on 32"),
                            (_eraser({"llm.layers.7": D}), "has no site 'llm.layers.7'")):
        with pytest.raises(InterpError, match=pattern) as error:
            with apply_eraser(model, eraser):
                pass
        assert "\n" not in str(error.value)
    with pytest.raises(InterpError, match="no site 'llm.layers.1'"):
        with apply_eraser(model, _eraser({"llm.layers.0": D}), sites=["llm.layers.1"]):
            pass
    with pytest.raises(InterpError, match="positions"):
        with apply_eraser(model, _eraser({"llm.layers.0": D}), positions="text"):
            pass


def test_fit_refuses_bad_requests(synthetic: Synthetic, tmp_path: Path) -> None:
    with pytest.raises(InterpError, match="unknown concept"):
        fit_eraser(synthetic.cache, synthetic.spoken, "colour", None)
    with pytest.raises(InterpError, match="unknown site"):
        fit_eraser(synthetic.cache, synthetic.spoken, "boc", ["llm.layers.9"])
    # a set without word timings: chars has no label anywhere
    untimed = tmp_path / "untimed"
    (untimed / "audio").mkdir(parents=True)
    lines = []
    for item in synthetic.spoken.items:
        record = item.to_dict()
        record["words"] = None
        lines.append(json.dumps(record))
        (untimed / item.audio).write_bytes((synthetic.set_root / item.audio).read_bytes())
    (untimed / MANIFEST).write_text("\n".join(lines) + "\n")
    with pytest.raises(InterpError, match="no item has word timings"):
        fit_eraser(synthetic.cache, SpokenSet.open(untimed), "chars", ["llm.layers.0"])


def test_evaluate_erasure_runs_the_harness_with_the_hooks(synthetic: Synthetic, text_eraser: Eraser, model,
                                                          tmp_path: Path) -> None:
    calls = []
    path = evaluate_erasure(model, text_eraser, synthetic.spoken, tmp_path, limit=2, sites="llm.layers.0",
                            progress=lambda done, total: calls.append(done))
    assert path == tmp_path / "tiny-ultravox+erase-text" / "set.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 and all(len(line["scores"]) == 2 for line in lines)
    record = json.loads((path.parent / "set.erasure.json").read_text())
    assert record["sites"] == ["llm.layers.0"] and record["eraser_digest"] == text_eraser.digest()
    assert calls[-1] == 2
    assert not {"logits", "score_choices"} & set(vars(model))
    assert all(not site.module._forward_hooks for site in model.sites().values())
    with pytest.raises(InterpError, match="another eraser digest"):
        evaluate_erasure(model, _eraser({"llm.layers.0": D}), synthetic.spoken, tmp_path, limit=2,
                         system_name="tiny-ultravox+erase-text", sites="llm.layers.0")


def test_trace_constrained_factors_are_compacted_and_ranked() -> None:
    """When concept-erasure mixes in the orthogonal projection it returns d × d factors; they are cut to the
    perturbation's columns and the rank is still the number of concept directions."""
    from concept_erasure import LeaceEraser

    from interp.erasure.fitter import _site_eraser_from_fitter

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g, dtype=torch.float64)
    z = torch.nn.functional.one_hot(torch.randint(0, 3, (500,), generator=g), 3).double()
    x[:, :2] += 3 * z[:, :2]
    fitter = LeaceFitter(12, 3, dtype=torch.float64).update(x, z)
    plain = fitter.eraser
    u, s, vh = torch.linalg.svd(plain.proj_left @ plain.proj_right)
    mixed = LeaceEraser(u * s.sqrt(), vh * s.sqrt()[:, None], plain.bias)

    class Stub:
        x_dim, z_dim, svd_tol = fitter.x_dim, fitter.z_dim, fitter.svd_tol
        eraser, sigma_xx, sigma_xz = mixed, fitter.sigma_xx, fitter.sigma_xz

    site = _site_eraser_from_fitter(Stub(), 500)
    assert site.trace_constrained and site.rank == 2 and site.proj_left.shape == (12, 2)
    torch.testing.assert_close(site(x.float()).double(), plain(x), atol=1e-5, rtol=0)
