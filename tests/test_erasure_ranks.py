"""Rank sweeps and the three random controls: text@K removes K directions, random@K exactly K with more variance
the larger K, random-var is the smallest raw random eraser that removes as much raw variance as text, and a sweep
over ranks puts them side by side with their rank and variance in every row; bad specs are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.erasure import SiteEraser, concept_labels, fit_eraser
from interp.erasure_sweep import SweepError, SweepPlan, expand_concepts, parse_concept, run_sweep
from interp.errors import InterpError
from interp.models.tiny import tiny_tokenizer, tiny_ultravox
from tests.test_erasure import N_TRAIN, SITES, VOCAB, Synthetic, _write

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES_PRESENT = len(VOCAB) + 2  # the planted words' first tokens ("the" + VOCAB) and "other" (silence)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return _write(tmp_path_factory.mktemp("ranks"))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _fit(synthetic: Synthetic, spec: str, tokenizer, **options):
    """fit_eraser as the sweep calls it for `spec`, on the training items."""
    chosen = parse_concept(spec).fit_options(text_classes=32, random_match="text")
    return fit_eraser(synthetic.cache, synthetic.spoken, sites=None, tokenizer=tokenizer,
                      items=synthetic.ids(slice(0, N_TRAIN)), **{**chosen, **options})


def _raw_removed(x: np.ndarray, basis: torch.Tensor) -> float:
    """Share of the rows' total variance (ddof 1) that projecting off the raw-space `basis` takes away."""
    u = basis.double().numpy()
    centred = x - x.mean(axis=0)
    after = centred - centred @ u @ u.T
    return float(1 - after.var(axis=0, ddof=1).sum() / centred.var(axis=0, ddof=1).sum())


def test_text_at_k_removes_k_directions(synthetic: Synthetic, tokenizer) -> None:
    """K most frequent tokens + other: rank K at every site while K + 1 ≤ the classes present, ≤ K past that."""
    for k in (2, 4, CLASSES_PRESENT - 1, CLASSES_PRESENT + 2):
        eraser = _fit(synthetic, f"text@{k}", tokenizer)
        assert eraser.meta["concept"]["text_classes"] == k
        ranks = [site.rank for site in eraser.sites.values()]
        if k + 1 <= CLASSES_PRESENT:
            assert ranks == [k] * len(SITES), (k, ranks)
        else:
            assert all(rank <= k for rank in ranks) and ranks == [CLASSES_PRESENT - 1] * len(SITES), (k, ranks)


def test_random_at_k_has_rank_k_and_removes_more_variance_the_larger_k(synthetic: Synthetic, tokenizer) -> None:
    """Exactly K directions in both spaces; the bases are nested (rank 2's are rank 4's first columns), so the
    variance removed grows with K at every site."""
    for family in ("random", "random-raw"):
        removed = {}
        for k in (1, 2, 4, 8):
            eraser = _fit(synthetic, f"{family}@{k}", tokenizer)
            assert [site.rank for site in eraser.sites.values()] == [k] * len(SITES)
            assert eraser.meta["concept"]["space"] == ("raw" if family == "random-raw" else "whitened")
            removed[k] = [site.variance_removed for site in eraser.sites.values()]
        for site in range(len(SITES)):
            series = [removed[k][site] for k in (1, 2, 4, 8)]
            assert all(a < b for a, b in zip(series, series[1:])), (family, series)
    small, large = (_fit(synthetic, f"random-raw@{k}", tokenizer).sites["llm.layers.0"] for k in (2, 4))
    torch.testing.assert_close(large.proj_left[:, :2], small.proj_left, atol=1e-6, rtol=0)


def test_random_var_is_the_smallest_raw_random_eraser_removing_text_variance(synthetic: Synthetic,
                                                                             tokenizer) -> None:
    """At each site: ≥ the text eraser's share of raw variance, and its first r − 1 directions remove less
    (recomputed from the rows); the meta records target and achieved per site."""
    k = 4
    text = _fit(synthetic, f"text@{k}", tokenizer)
    control = _fit(synthetic, f"random-var@{k}", tokenizer)
    assert control.meta["method"] == "random-raw-variance" and control.meta["concept"]["match_by"] == "variance"
    labels = concept_labels(synthetic.cache, synthetic.spoken, "text", text_classes=k, tokenizer=tokenizer)
    train = labels.keep & (synthetic.cache.row_table()["item"] < N_TRAIN)
    for name, site in control.sites.items():
        record = control.meta["concept"]["variance_match"][name]
        target = text.sites[name].variance_removed
        assert record["target"] == pytest.approx(target, abs=1e-9) and record["matched_rank"] == k
        assert record["rank"] == site.rank and record["achieved"] == site.variance_removed
        assert site.variance_removed >= target > 0
        x = synthetic.cache.read(name)[train].astype(np.float64)
        assert _raw_removed(x, site.proj_left) == pytest.approx(site.variance_removed, abs=1e-5)
        assert _raw_removed(x, site.proj_left[:, :site.rank - 1]) < target, (name, site.rank)
    assert control.sites["llm.layers.0"].rank > k  # where the words are planted, they carry the variance
    assert fit_eraser(synthetic.cache, synthetic.spoken, "random", ["llm.layers.1"], match="text",
                      match_by="variance", random_space="raw", tokenizer=tokenizer,
                      text_classes=k).sites["llm.layers.1"].rank > 0


def test_random_matching_variance_edges() -> None:
    """A target of 0 needs no direction; a target no rank reaches stops at d."""
    from interp.erasure import SiteFitter

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    fitter = SiteFitter(6, 2).update(x, torch.nn.functional.one_hot(torch.arange(200) % 2, 2).double())
    assert fitter.random_matching_variance(0.0, seed=0, site="s").rank == 0
    full: SiteEraser = fitter.random_matching_variance(1.5, seed=0, site="s")
    assert full.rank == 6 and full.variance_removed == pytest.approx(1.0, abs=1e-6)
    for target in (0.1, 0.5, 0.9):
        eraser = fitter.random_matching_variance(target, seed=0, site="s")
        assert eraser.variance_removed >= target
        assert fitter.random(eraser.rank - 1, seed=0, site="s", space="raw").variance_removed < target


def test_bad_requests_are_refused_in_one_line(synthetic: Synthetic) -> None:
    for concepts, ranks, said in ((["text@x"], None, "whole number"), (["text@0"], None, "whole number"),
                                  (["chars@8"], None, "takes no rank"), (["random-var@"], None, "whole number"),
                                  (["nope"], None, "unknown concept 'nope'"), (["text"], [0], "ranks"),
                                  (["chars"], [4], "no concept given is one of them")):
        with pytest.raises(SweepError, match=said) as raised:
            SweepPlan(model="tiny-ultravox", sets=[], out=Path("run"), concepts=concepts, ranks=ranks)
        assert "\n" not in str(raised.value)
    with pytest.raises(InterpError, match="raw"):
        fit_eraser(synthetic.cache, synthetic.spoken, "random", None, match="boc", match_by="variance")
    with pytest.raises(InterpError, match="not a rank"):
        fit_eraser(synthetic.cache, synthetic.spoken, "random", None, match=4, match_by="variance",
                   random_space="raw")
    from interp.cli.erase import _ranks

    assert _ranks("4, 8,16") == [4, 8, 16] and _ranks(None) is None
    for text in ("4,x", "0", ""):
        with pytest.raises(SweepError, match="--ranks"):
            _ranks(text)
    assert [s.name for s in expand_concepts(["energy", "text", "random-raw", "text@32"], [8, 4])] == [
        "energy", "text@8", "random-raw@8", "text@4", "random-raw@4", "text@32"]


def test_a_rank_sweep_puts_text_and_the_three_controls_side_by_side(synthetic: Synthetic, tmp_path: Path) -> None:
    """--concepts text,random,random-raw,random-var --ranks 2,4 on tiny-ultravox: every row has its rank and
    variance; random@K has rank K, random-var removes at least text@K's variance; the figure plots vs rank."""
    plan = SweepPlan(model="tiny-ultravox", sets=[synthetic.set_root], out=tmp_path / "run",
                     concepts=["text", "random", "random-raw", "random-var"], ranks=[2, 4], layer_sets=["0-1"],
                     limit=8, threads=1)
    rows = run_sweep(plan, model=tiny_ultravox())
    assert [(r["concept"], r["rank"]) for r in rows] == [("none (clean)", None)] + [
        (f"{family}@{k}", k) for k in (2, 4) for family in ("text", "random", "random-raw", "random-var")]
    by_name = {r["concept"]: r for r in rows}
    for k in (2, 4):
        text, control = by_name[f"text@{k}"], by_name[f"random-var@{k}"]
        assert 0 < text["rank_mean"] <= k and by_name[f"random@{k}"]["rank_mean"] == k
        assert by_name[f"random-raw@{k}"]["rank_mean"] == k
        assert control["variance_removed"] >= text["variance_removed"] > 0
        assert all(r["variance_removed"] is not None for r in rows)
    document = json.loads((plan.out / "sweep.json").read_text(encoding="utf-8"))
    assert "rank" in document["columns"] and document["provenance"]["config"]["ranks"] == [2, 4]
    meta = json.loads(json.dumps(_load_meta(plan.out / "erasers" / "set-random-var-r4-0-1.safetensors")))
    assert set(meta["concept"]["variance_match"]) == {"llm.layers.0", "llm.layers.1"}
    assert meta["sweep"]["spec"] == "random-var@4" and meta["sweep"]["rank"] == 4
    assert (plan.out / "tiny-ultravox+erase-text-r2-L0-1" / "set.jsonl").is_file()
    assert "accuracy vs rank" in (plan.out / "sweep.html").read_text(encoding="utf-8")


def _load_meta(path: Path) -> dict:
    from interp.erasure import Eraser

    return Eraser.load(path).meta
