"""The extraction loop: cached rows against HF's own hidden states, batching, fp16 overflow, resume after
SIGKILL, sharded runs, and refusals (another model's cache, mixed row families)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from activations import ActivationCache, Float16Overflow, verify
from activations.extract import extract, plan_extraction
from activations.format import CacheMismatch
from interp.data.manifest import SpokenSet
from interp.errors import InterpError
from interp.models.base import describe_model
from interp.models.mini import load_model
from interp.task_prompts import task_prompt
from tests.helpers import reference_hidden_states, run_cli

ADAPTERS = ["tiny-ultravox", "tiny-qwen2-audio", "tiny-phi4mm"]


def _prompt(item):
    return task_prompt(item.task).for_item(item)


def _extract(model, spoken, out, spec="llm.layers.*", **kwargs):
    plan = plan_extraction(model, spec, kwargs.pop("positions", "audio"))
    return extract(model, spoken, out, plan=plan, prompt_for=_prompt, **kwargs)


def _rows(cache: Path, site: str) -> np.ndarray:
    return ActivationCache.open(cache).read(site)


@pytest.fixture(scope="module")
def spoken(sentiment_set) -> SpokenSet:
    return SpokenSet.open(sentiment_set)


@pytest.mark.parametrize("name", ADAPTERS)
def test_rows_equal_output_hidden_states_in_float32_and_fp16(name, spoken, tmp_path) -> None:
    """llm.layers.i rows = hidden_states[i+1] at the audio positions; the last layer (HF returns it after
    the final norm) equals it once the model's own norm is applied. fp16 rows = those values rounded."""
    model = load_model(name)
    items = spoken.items[:3]
    _extract(model, spoken, tmp_path / "f32", dtype="float32", limit=3, positions="all")
    _extract(model, spoken, tmp_path / "f16", dtype="float16", limit=3, positions="all")
    f32, f16 = ActivationCache.open(tmp_path / "f32"), ActivationCache.open(tmp_path / "f16")
    table = f32.row_table()
    batch = model.prepare([spoken.load_audio(item) for item in items], [_prompt(item) for item in items])
    hidden = reference_hidden_states(model, batch)
    layers = len(hidden) - 1
    for row, item in enumerate(items):
        mine = table["item"] == row
        pos = table["pos"][mine]
        assert (table["kind"][mine] == 0).sum() == int(batch.audio_mask[row].sum())
        assert np.array_equal(table["token_id"][mine] == -1, batch.audio_mask[row, pos].numpy())
        for layer in range(layers):
            cached = torch.from_numpy(f32.read(f"llm.layers.{layer}", items=[item.id]))
            expected = hidden[layer + 1][row, pos]
            if layer == layers - 1:
                cached = model.final_norm(cached)
            assert (cached - expected).abs().max() <= 1e-5
        fp16 = f16.read(f"llm.layers.{layers - 2}", items=[item.id])
        assert np.array_equal(fp16, f32.read(f"llm.layers.{layers - 2}", items=[item.id]).astype(np.float16)
                              .astype(np.float32))


@pytest.mark.slow
def test_mini_ultravox_rows_equal_output_hidden_states(spoken, tmp_path) -> None:
    model = load_model("mini-ultravox")
    items = spoken.items[:2]
    _extract(model, spoken, tmp_path / "c", "llm.layers.0,15,29", dtype="float32", limit=2)
    cache = ActivationCache.open(tmp_path / "c")
    batch = model.prepare([spoken.load_audio(item) for item in items], [_prompt(item) for item in items])
    hidden = reference_hidden_states(model, batch)
    for row, item in enumerate(items):
        mask = batch.audio_mask[row]
        assert cache.read("llm.layers.0", items=[item.id]).shape == (int(mask.sum()), 576)
        for layer in (0, 15):
            diff = torch.from_numpy(cache.read(f"llm.layers.{layer}", items=[item.id])) - hidden[layer + 1][row, mask]
            assert diff.abs().max() <= 1e-5
        last = model.final_norm(torch.from_numpy(cache.read("llm.layers.29", items=[item.id])))
        assert (last - hidden[30][row, mask]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["tiny-qwen2-audio", "tiny-ultravox"])
def test_batch_size_does_not_change_rows(spoken, tmp_path, name) -> None:
    """Clips of different lengths padded into one batch give the rows each gives alone (Ultravox: the
    encoder zeroes padded frames before its convolutions and after its last layer)."""
    model = load_model(name)
    _extract(model, spoken, tmp_path / "b1", dtype="float32", batch_size=1, limit=8)
    _extract(model, spoken, tmp_path / "b8", dtype="float32", batch_size=8, limit=8)
    for site in ("llm.layers.0", "llm.layers.1"):
        one, eight = _rows(tmp_path / "b1", site), _rows(tmp_path / "b8", site)
        assert one.shape == eight.shape and one.shape[0] > 0
        assert np.abs(one - eight).max() <= 1e-4


def test_fp16_overflow_stops_with_the_site_named(spoken, tmp_path) -> None:
    model = load_model("tiny-ultravox")
    layer = model.sites()["llm.layers.1"].module
    handle = layer.register_forward_hook(lambda module, args, output: output * 1e6)
    try:
        with pytest.raises(Float16Overflow, match="llm.layers.1"):
            _extract(model, spoken, tmp_path / "c", dtype="float16", limit=4)
    finally:
        handle.remove()
    assert not list((tmp_path / "c").glob("shard-*.h5"))


def test_encoder_sites_have_one_row_per_frame_and_cannot_mix_with_llm_sites(spoken, tmp_path) -> None:
    model = load_model("tiny-ultravox")
    _extract(model, spoken, tmp_path / "enc", "audio.layers.*", dtype="float32", limit=2)
    cache = ActivationCache.open(tmp_path / "enc")
    table = cache.row_table()
    for row, item in enumerate(cache.items):
        mine = table["item"] == row
        assert mine.sum() == int(np.ceil(item.duration / 0.02 - 1e-6))
        assert table["t_end"][mine].max() == pytest.approx(item.duration, abs=1e-5)
    with pytest.raises(InterpError, match="different rows"):
        plan_extraction(model, "audio.layers.0,llm.layers.0", "audio")
    with pytest.raises(InterpError, match="--positions audio"):
        plan_extraction(model, "projector,llm.layers.0", "all")


def _equal_caches(a: Path, b: Path, sites: list[str]) -> None:
    first, second = ActivationCache.open(a), ActivationCache.open(b)
    assert [i.id for i in first.items] == [i.id for i in second.items]
    for key, value in first.row_table().items():
        np.testing.assert_array_equal(value, second.row_table()[key])
    for site in sites:
        np.testing.assert_array_equal(first.read(site), second.read(site))


def _extract_args(cache: Path, data: Path, *extra: str) -> list[str]:
    return ["extract", "--model", "tiny-ultravox", "--data", str(data), "--out", str(cache), "--sites",
            "llm.layers.0,2", "--batch-size", "1", "--items-per-shard", "2", *extra]


def test_killed_extraction_resumes_to_the_same_cache(sentiment_set, tmp_path) -> None:
    reference = run_cli(*_extract_args(tmp_path / "ref", sentiment_set))
    assert reference.returncode == 0, reference.stderr
    cache = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "interp", *_extract_args(cache, sentiment_set)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("shard-*.h5"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = ActivationCache.open(cache)
    assert 0 < len(partial.items) < 12, "the kill must land mid-run"
    assert all(len(item.id) for item in partial.items)
    rerun = run_cli(*_extract_args(cache, sentiment_set))
    assert rerun.returncode == 0, rerun.stderr
    _equal_caches(tmp_path / "ref", cache, ["llm.layers.0", "llm.layers.2"])
    assert verify(cache).ok
    assert run_cli("cache", "verify", cache).returncode == 0


def test_two_shards_and_finalize_equal_one_run(sentiment_set, tmp_path) -> None:
    assert run_cli(*_extract_args(tmp_path / "one", sentiment_set, "--limit", "6")).returncode == 0
    for rank in (0, 1):
        result = run_cli(*_extract_args(tmp_path / "two", sentiment_set, "--limit", "6", "--shard", f"{rank}/2"))
        assert result.returncode == 0, result.stderr
    assert "finalize" in result.stdout
    finalized = run_cli("cache", "finalize", tmp_path / "two")
    assert finalized.returncode == 0, finalized.stderr
    _equal_caches(tmp_path / "one", tmp_path / "two", ["llm.layers.0", "llm.layers.2"])


def test_cache_of_another_model_is_refused_unless_overwrite(sentiment_set, tmp_path) -> None:
    cache = tmp_path / "c"
    assert run_cli(*_extract_args(cache, sentiment_set, "--limit", "2")).returncode == 0
    other = ["extract", "--model", "tiny-qwen2-audio", "--data", str(sentiment_set), "--out", str(cache),
             "--sites", "llm.layers.0", "--limit", "2"]
    refused = run_cli(*other)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--overwrite" in refused.stderr and "tiny-ultravox" in refused.stderr
    assert ActivationCache.open(cache).model == "tiny-ultravox"
    replaced = run_cli(*other, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert ActivationCache.open(cache).model == "tiny-qwen2-audio"


def test_cache_of_other_weights_under_the_same_name_is_refused(spoken, tmp_path) -> None:
    """mini-ultravox's name does not fix its projector: the weights' fingerprint is part of the cache's identity."""
    model = load_model("tiny-ultravox")
    model.weights = {"projector": "p.safetensors", "sha256": "aa"}
    _extract(model, spoken, tmp_path / "c", limit=2, model_info=describe_model(model, "tiny-ultravox"))
    _extract(model, spoken, tmp_path / "c", limit=3, model_info=describe_model(model, "tiny-ultravox"))  # resumes
    assert len(ActivationCache.open(tmp_path / "c").items) == 3
    model.weights = {"projector": "p.safetensors", "sha256": "bb"}
    with pytest.raises(CacheMismatch, match="model_info differs in weights"):
        _extract(model, spoken, tmp_path / "c", limit=4, model_info=describe_model(model, "tiny-ultravox"))
    assert len(ActivationCache.open(tmp_path / "c").items) == 3


def test_bad_site_and_text_model_get_one_line(sentiment_set, tmp_path) -> None:
    unknown = run_cli(*_extract_args(tmp_path / "c", sentiment_set)[:-6], "--sites", "llm.layers.99")
    assert unknown.returncode == 2 and "llm.layers.99" in unknown.stderr and unknown.stderr.count("\n") == 1
    cascade = run_cli("extract", "--model", "oracle", "--data", sentiment_set, "--out", tmp_path / "o")
    assert cascade.returncode == 2 and "not an end-to-end speech model" in cascade.stderr
