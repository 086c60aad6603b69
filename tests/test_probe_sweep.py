"""Probe sweeps on a synthetic cache whose sites carry planted signals: each probe finds its own signal
(positive control) and nothing in random features (negative control), on held-out items only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from activations import ActivationCache, CacheHeader, CacheWriter, ItemMeta, ItemRows
from interp.data.audio import SAMPLE_RATE, write_wav
from interp.data.manifest import MANIFEST, Item, Source, Speech, SpokenSet
from interp.errors import InterpError
from interp.sites import sort_sites
from probes import (
    PooledRows,
    ProbeReport,
    bag_of_characters,
    ctc_length,
    encode_chars,
    energy_db,
    pitch_track,
    probe_figure,
)
from probes.sweep import run_probes
from tests.test_probe_ctc import WORDS, planted_rows

N_ITEMS = 80
ROW_SECONDS = 0.05
R_TRUE = 2
# Written out of layer order on purpose: the report must sort them.
SITES = {"llm.layers.10": 32, "projector": 36, "llm.layers.2": R_TRUE * 29 + 20, "audio.layers.0": 8}
LAYER_ORDER = ("audio.layers.0", "projector", "llm.layers.2", "llm.layers.10")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Synthetic:
    """A spoken set and a cache of its items; energy per item's rows, as the probe computes it."""

    set_root: Path
    cache_path: Path
    energy: dict[str, np.ndarray]


def _wave(rows: int, rng: np.random.Generator) -> np.ndarray:
    """One 50 ms stretch per row: a harmonic tone of random F0 and level, or (one in five) silence."""
    t = np.arange(int(ROW_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    parts = []
    for _ in range(rows):
        if rng.random() < 0.2:
            parts.append(np.zeros(t.size))
            continue
        f0, level = rng.uniform(100, 250), rng.uniform(0.03, 0.5)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
        parts.append(level * tone / np.abs(tone).max())
    return np.concatenate(parts).astype(np.float32)


def _item(i: int, transcript: str, duration: float) -> Item:
    return Item(id=f"utt-{i:03d}", task="synthetic", audio=f"audio/utt-{i:03d}.wav", sample_rate=SAMPLE_RATE,
                duration=duration, transcript=transcript, choices=(), label=(transcript,),
                source=Source("synthetic", "test", str(i)), speech=Speech(kind="tts", engine="synthetic"))


def _site_rows(labels: np.ndarray, rows: int, energy: np.ndarray, log_f0: np.ndarray,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each site's rows: acoustics (audio.layers.0), character counts (projector), CTC frames (llm.layers.2), noise."""
    voiced = np.isfinite(log_f0)
    acoustic = np.column_stack([energy / 10, np.where(voiced, log_f0, 0.0), voiced,
                                rng.standard_normal((rows, 5))]) + 0.01 * rng.standard_normal((rows, 8))
    counts = np.bincount(labels - 1, minlength=28)
    text = np.column_stack([np.tile(0.2 * counts, (rows, 1)), rng.standard_normal((rows, 8))])
    return {"audio.layers.0": acoustic.astype(np.float32),
            "projector": (text + 0.05 * rng.standard_normal(text.shape)).astype(np.float32),
            "llm.layers.2": planted_rows(labels, rows, R_TRUE, rng),
            "llm.layers.10": rng.standard_normal((rows, SITES["llm.layers.10"])).astype(np.float32)}


def _write(root: Path, *, positions: str = "audio", n_items: int = N_ITEMS) -> Synthetic:
    rng = np.random.default_rng(0)
    set_root, cache_path = root / "set", root / "cache"
    (set_root / "audio").mkdir(parents=True)
    header = CacheHeader(model="synthetic", sites=dict(SITES), dtype="float32", positions=positions,
                         dataset=str(set_root))
    energy, lines = {}, []
    with CacheWriter.open(cache_path, header, items_per_shard=32) as writer:
        for i in range(n_items):
            transcript = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
            labels = encode_chars(transcript)
            rows = int(np.ceil(ctc_length(labels) / R_TRUE)) + int(rng.integers(0, 2))
            item = _item(i, transcript, rows * ROW_SECONDS)
            write_wav(set_root / item.audio, _wave(rows, rng))
            wave, _ = sf.read(str(set_root / item.audio), dtype="float32")  # the 16-bit samples the probe reads
            start = (np.arange(rows) * ROW_SECONDS).astype(np.float32)  # the cache stores spans as float32
            end = start + np.float32(ROW_SECONDS)
            energy[item.id] = energy_db(wave, SAMPLE_RATE, start, end)
            log_f0 = pitch_track(wave, SAMPLE_RATE).log_hz(start, end)
            audio = positions == "audio"
            writer.add(ItemMeta(item.id, i, transcript, None, item.duration), ItemRows(
                pos=np.arange(rows), kind=np.full(rows, 0 if audio else 1), t_start=start if audio else np.full(
                    rows, np.nan), t_end=end if audio else np.full(rows, np.nan),
                token_id=np.full(rows, -1) if audio else np.arange(rows),
                sites=_site_rows(labels, rows, energy[item.id], log_f0, rng)))
            lines.append(json.dumps(item.to_dict()))
    (set_root / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Synthetic(set_root, cache_path, energy)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return _write(tmp_path_factory.mktemp("probes"))


@pytest.fixture(scope="module")
def report(synthetic: Synthetic) -> ProbeReport:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_probes(ActivationCache.open(synthetic.cache_path), SpokenSet.open(synthetic.set_root), seed=3)
    finally:
        torch.set_num_threads(threads)


def test_sites_are_reported_in_layer_order() -> None:
    assert sort_sites(["llm.layers.10", "llm.layers.2", "projector", "audio.layers.11", "llm.embed",
                       "audio.layers.3"]) == ["audio.layers.3", "audio.layers.11", "projector", "llm.embed",
                                              "llm.layers.2", "llm.layers.10"]


def test_sweep_reports_every_probe_at_every_site_in_layer_order(report: ProbeReport) -> None:
    assert report.sites == LAYER_ORDER
    assert [(s.site, s.probe) for s in report.scores] == [(site, probe) for site in LAYER_ORDER
                                                          for probe in ("energy", "pitch", "ctc", "boc")]
    for entry in report.scores:
        assert entry.low <= entry.score <= entry.high, entry
        assert entry.n_items == len(report.test_items)


def test_planted_acoustics_are_found_and_random_features_explain_nothing(report: ProbeReport) -> None:
    assert report.score("audio.layers.0", "energy").score >= 0.99
    assert report.score("audio.layers.0", "pitch").score >= 0.95
    assert report.score("llm.layers.10", "energy").score <= 0.05
    assert report.score("llm.layers.10", "pitch").score <= 0.05
    assert 0.5 < report.score("audio.layers.0", "pitch").extra["voiced_share"] < 0.95


def test_planted_characters_decode_and_random_features_do_not(report: ProbeReport, synthetic: Synthetic) -> None:
    ctc = report.score("llm.layers.2", "ctc")
    assert ctc.score >= 0.9
    assert report.score("llm.layers.10", "ctc").score <= 0.2
    assert {report.score(site, "ctc").extra["r"] for site in report.sites} == {R_TRUE}
    cache = ActivationCache.open(synthetic.cache_path)
    rows = np.bincount(cache.row_table()["item"], minlength=len(cache.items))
    train = set(report.train_items)
    assert all(rows[k] * R_TRUE >= ctc_length(encode_chars(meta.transcript))
               for k, meta in enumerate(cache.items) if meta.id in train)
    assert 1 <= ctc.extra["best_epoch"] <= ctc.extra["epochs"]
    assert ctc.extra["examples"][0]["item_id"] == report.test_items[0]


def test_planted_character_counts_are_found_and_random_features_explain_nothing(report: ProbeReport) -> None:
    assert report.score("projector", "boc").score >= 0.95
    assert report.score("llm.layers.10", "boc").score <= 0.05


def test_energy_r2_equals_sklearn_ridge_on_the_held_out_rows(report: ProbeReport, synthetic: Synthetic) -> None:
    """Refit sklearn's Ridge with the reported λ on the training rows and score the test rows with r2_score."""
    cache = ActivationCache.open(synthetic.cache_path)
    for site in ("audio.layers.0", "llm.layers.10"):
        entry = report.score(site, "energy")
        data = {}
        for part, ids in (("train", report.train_items), ("test", report.test_items)):
            y = np.concatenate([synthetic.energy[i] for i in ids])
            x = cache.read(site, items=ids)
            data[part] = (x[np.isfinite(y)], y[np.isfinite(y)])
        model = Ridge(alpha=entry.extra["lambda"]).fit(*data["train"])
        x_test, y_test = data["test"]
        assert entry.score == pytest.approx(r2_score(y_test, model.predict(x_test)), abs=1e-6)
        assert entry.extra["n_test_rows"] == y_test.size


def test_bag_of_characters_r2_equals_sklearn_on_pooled_rows(report: ProbeReport, synthetic: Synthetic) -> None:
    """Mean rows per item, sklearn Ridge with the reported λ, r2_score averaged over the letters that vary."""
    cache = ActivationCache.open(synthetic.cache_path)
    transcripts = {meta.id: meta.transcript for meta in cache.items}
    for site in ("projector", "llm.layers.10"):
        entry = report.score(site, "boc")
        data = {}
        for part, ids in (("train", report.train_items), ("test", report.test_items)):
            x = np.stack([cache.read(site, items=[i]).astype(np.float64).mean(axis=0) for i in ids])
            data[part] = (x, np.stack([bag_of_characters(transcripts[i]) for i in ids]))
        x_test, y_test = data["test"]
        prediction = Ridge(alpha=entry.extra["lambda"]).fit(*data["train"]).predict(x_test)
        varying = y_test.std(axis=0) > 0
        expected = r2_score(y_test[:, varying], prediction[:, varying], multioutput="uniform_average")
        assert entry.score == pytest.approx(expected, abs=1e-6)
        assert entry.extra["n_varying_outputs"] == varying.sum()


def test_pooled_rows_are_per_item_means_whatever_the_row_order() -> None:
    rng = np.random.default_rng(0)
    item = rng.integers(0, 5, size=40)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    pooled = PooledRows(6, 3)
    pooled.update(x[:25], item[:25])
    pooled.update(x[25:], item[25:])
    present = np.unique(item)
    expected = np.stack([x[item == k].astype(np.float64).mean(axis=0) for k in present])
    np.testing.assert_allclose(pooled.means(present), expected, rtol=1e-12)
    with pytest.raises(InterpError, match="no audio rows"):
        pooled.means(np.array([5]))


def test_split_holds_out_whole_items_and_the_same_seed_gives_the_same_report(report: ProbeReport,
                                                                            synthetic: Synthetic) -> None:
    assert not set(report.train_items) & set(report.test_items)
    assert len(report.test_items) == round(0.2 * N_ITEMS)
    assert sorted(report.train_items + report.test_items) == [f"utt-{i:03d}" for i in range(N_ITEMS)]
    calls = []
    again = run_probes(ActivationCache.open(synthetic.cache_path), SpokenSet.open(synthetic.set_root), seed=3,
                       sites=["llm.layers.10", "llm.layers.2"], progress=lambda *args: calls.append(args))
    assert calls == [(1, 2, "llm.layers.2"), (2, 2, "llm.layers.10")]
    assert (again.train_items, again.test_items) == (report.train_items, report.test_items)
    assert again.scores == tuple(s for s in report.scores if s.site in again.sites)


def test_report_round_trips_through_json_with_its_provenance(report: ProbeReport) -> None:
    record = json.loads(report.to_json({"command": "interp probe", "seed": 3}))
    assert record["provenance"] == {"command": "interp probe", "seed": 3}
    assert ProbeReport.from_dict(record) == report
    with pytest.raises(InterpError, match="no boc score at site 'llm.embed'"):
        report.score("llm.embed", "boc")


def test_figure_draws_a_line_and_a_band_per_probe_and_panel(report: ProbeReport) -> None:
    figure = probe_figure(report)
    lines = [trace for trace in figure.data if trace.mode == "lines+markers"]
    bands = [trace for trace in figure.data if trace.fill == "toself"]
    assert len(lines) == len(bands) == 4 * 2  # four probes, audio-encoder and LLM panels
    llm_ctc = next(t for t in lines if t.name == "CTC 1 − CER" and t.xaxis == "x2")
    assert list(llm_ctc.x) == list(LAYER_ORDER[1:])
    assert list(llm_ctc.y) == [report.score(site, "ctc").score for site in LAYER_ORDER[1:]]
    assert [a.text for a in figure.layout.annotations] == ["audio encoder", "LLM"]


def test_a_cache_without_audio_rows_is_refused(tmp_path: Path) -> None:
    text_only = _write(tmp_path, positions="text", n_items=4)
    with pytest.raises(InterpError, match=r"holds no audio rows \(positions 'text'\)"):
        run_probes(ActivationCache.open(text_only.cache_path), SpokenSet.open(text_only.set_root))


def test_a_spoken_set_without_the_cache_items_is_refused(tmp_path: Path, synthetic: Synthetic) -> None:
    lines = (synthetic.set_root / MANIFEST).read_text(encoding="utf-8").splitlines()
    partial = tmp_path / "partial"
    (partial / "audio").mkdir(parents=True)
    for line in lines[:5] + lines[6:]:
        audio = json.loads(line)["audio"]
        (partial / audio).write_bytes((synthetic.set_root / audio).read_bytes())
    (partial / MANIFEST).write_text("\n".join(lines[:5] + lines[6:]) + "\n", encoding="utf-8")
    with pytest.raises(InterpError, match=r"lacks 1 of the cache's 80 items, first 'utt-005'"):
        run_probes(ActivationCache.open(synthetic.cache_path), SpokenSet.open(partial))


def test_unknown_sites_and_probes_are_refused(synthetic: Synthetic) -> None:
    cache, spoken = ActivationCache.open(synthetic.cache_path), SpokenSet.open(synthetic.set_root)
    with pytest.raises(InterpError, match="unknown site 'llm.layer.2': this cache has audio.layers.0, projector"):
        run_probes(cache, spoken, sites=["llm.layer.2"])
    with pytest.raises(InterpError, match="choose distinct names among energy, pitch, ctc, boc"):
        run_probes(cache, spoken, probes=("energy", "phones"))

