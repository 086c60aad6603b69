"""The activation store: exact round trips per dtype, crash-safe resume, multi-rank merge, verify, export.

Small synthetic items (numpy only), so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from activations import (
    MANIFEST,
    ActivationCache,
    CacheError,
    CacheHeader,
    CacheMismatch,
    CacheWriter,
    Float16Overflow,
    ItemMeta,
    ItemRows,
    NonFiniteActivation,
    export,
    finalize,
    info,
    verify,
)

ROOT = Path(__file__).resolve().parents[1]
SITES = {"enc.layers.0": 8, "llm.layers.4": 16}
N_ITEMS = 10


def header(dtype: str = "float32", sites: dict[str, int] | None = None, **provenance: object) -> CacheHeader:
    return CacheHeader(model="mini-ultravox", sites=dict(sites or SITES), dtype=dtype, positions="all",
                       dataset="sets/sentiment", model_info={"revision": "abc", "layers": [0, 4]},
                       provenance={"command": "test", **provenance})


def make_item(i: int, scale: float = 1.0) -> tuple[ItemMeta, ItemRows]:
    """Item i: 3..6 audio rows then 2 text rows, given in shuffled position order, seeded by i."""
    rng = np.random.default_rng(i)
    n_audio, n_text = 3 + i % 4, 2
    n = n_audio + n_text
    kind = np.array([0] * n_audio + [1] * n_text, dtype=np.uint8)
    t_start = np.where(kind == 0, np.arange(n) * 0.04, np.nan).astype(np.float32)
    t_end = np.where(kind == 0, t_start + 0.04, np.nan).astype(np.float32)
    token_id = np.where(kind == 0, -1, 100 + np.arange(n))
    sites = {name: (rng.standard_normal((n, d)) * scale).astype(np.float32) for name, d in SITES.items()}
    shuffle = rng.permutation(n)
    rows = ItemRows(pos=(np.arange(n) + 5)[shuffle], kind=kind[shuffle], t_start=t_start[shuffle],
                    t_end=t_end[shuffle], token_id=token_id[shuffle], sites={k: v[shuffle] for k, v in sites.items()})
    meta = ItemMeta(f"item-{i:03d}", i, f"transcript number {i}", "positive" if i % 2 else None, 1.0 + 0.25 * i)
    return meta, rows


def expected(site: str, ids: range = range(N_ITEMS)) -> np.ndarray:
    """The site's rows in cache order: dataset index, then position (make_item's unshuffled order)."""
    parts = []
    for i in ids:
        _, rows = make_item(i)
        parts.append(rows.sites[site][np.argsort(rows.pos)])
    return np.concatenate(parts)


def write(path: Path, order: list[int] | range = range(N_ITEMS), dtype: str = "float32", *, rank: int = 0,
          world: int = 1, items_per_shard: int = 3, **kwargs: object) -> Path:
    with CacheWriter.open(path, header(dtype, rank=rank), rank=rank, world=world, items_per_shard=items_per_shard,
                          **kwargs) as writer:
        for i in order:
            writer.add(*make_item(i))
    return path


def assert_same(a: ActivationCache, b: ActivationCache) -> None:
    assert a.items == b.items
    assert a.rows == b.rows
    for site in SITES:
        np.testing.assert_array_equal(a.read(site), b.read(site))
    table_a, table_b = a.row_table(), b.row_table()
    assert table_a.keys() == table_b.keys()
    for key in table_a:
        np.testing.assert_array_equal(table_a[key], table_b[key])


def test_float32_round_trip_is_exact(tmp_path: Path) -> None:
    cache = ActivationCache.open(write(tmp_path / "c"))
    assert cache.model == "mini-ultravox" and cache.sites == list(SITES) and cache.dtype == "float32"
    assert cache.header == header("float32", rank=0)
    assert [i.id for i in cache.items] == [f"item-{i:03d}" for i in range(N_ITEMS)]
    first, second = cache.items[0], cache.items[1]
    assert first.label is None and second.label == "positive" and second.transcript == "transcript number 1"
    assert second.duration == pytest.approx(1.25)
    for site in SITES:
        got = cache.read(site)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected(site))
    table = cache.row_table()
    _, rows = make_item(0)
    order = np.argsort(rows.pos)
    n0 = len(order)
    assert cache.rows == len(table["pos"]) == len(expected("enc.layers.0"))
    np.testing.assert_array_equal(table["item"][:n0], 0)
    np.testing.assert_array_equal(table["pos"][:n0], rows.pos[order])
    np.testing.assert_array_equal(table["kind"][:n0], rows.kind[order])
    np.testing.assert_array_equal(table["t_start"][:n0], rows.t_start[order])
    np.testing.assert_array_equal(table["token_id"][:n0], rows.token_id[order])
    assert table["kind"].dtype == np.uint8 and np.isnan(table["t_end"][table["kind"] == 1]).all()
    report = verify(cache.path)
    assert report.ok, report.problems
    assert (report.shards, report.items, report.rows) == (4, N_ITEMS, cache.rows)


def test_float16_is_numpy_rounding(tmp_path: Path) -> None:
    cache = ActivationCache.open(write(tmp_path / "c", dtype="float16"))
    for site in SITES:
        np.testing.assert_array_equal(cache.read(site), expected(site).astype(np.float16).astype(np.float32))


def test_bfloat16_is_torch_rounding(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    cache = ActivationCache.open(write(tmp_path / "c", dtype="bfloat16"))
    for site in SITES:
        want = torch.from_numpy(expected(site)).bfloat16().float().numpy()
        np.testing.assert_array_equal(cache.read(site), want)
    # Ties and extremes round as torch does too.
    tricky = np.array([[1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.0e38, 1e-40, -0.0, 65504.0, 7e4]],
                      dtype=np.float32)
    meta = ItemMeta("x", 0, "", None, 1.0)
    rows = ItemRows(pos=np.array([0]), kind=np.array([0], np.uint8), t_start=np.array([0.0]), t_end=np.array([0.1]),
                    token_id=np.array([-1]), sites={"s": tricky})
    sites = {"s": tricky.shape[1]}
    with CacheWriter.open(tmp_path / "t", header("bfloat16", sites=sites)) as writer:
        writer.add(meta, rows)
    got = ActivationCache.open(tmp_path / "t").read("s")
    want = torch.from_numpy(tricky).bfloat16().float().numpy()
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_float16_overflow_and_nan_are_refused_naming_the_site(tmp_path: Path) -> None:
    meta, rows = make_item(0)
    rows.sites["llm.layers.4"][1, 3] = 7.0e4
    with pytest.raises(Float16Overflow, match=r"llm\.layers\.4.*70000.*--dtype float32"):
        with CacheWriter.open(tmp_path / "c", header("float16"), items_per_shard=100) as writer:
            writer.add(*make_item(1))
            writer.add(meta, rows)
    # The exception dropped the buffer: no shard holds the good item either, and a rerun starts clean.
    assert not list((tmp_path / "c").glob("shard-*.h5"))
    with CacheWriter.open(tmp_path / "c", header("float16")) as writer:
        assert writer.done == set()
        writer.add(meta, make_item(0)[1])
    rows.sites["llm.layers.4"][1, 3] = 65504.0
    rows.sites["enc.layers.0"][0, 0] = np.nan
    with pytest.raises(NonFiniteActivation, match=r"enc\.layers\.0.*1 of"):
        with CacheWriter.open(tmp_path / "d", header("float32")) as writer:
            writer.add(meta, rows)


def test_read_order_is_dataset_index_whatever_the_write_order(tmp_path: Path) -> None:
    shuffled = list(np.random.default_rng(3).permutation(N_ITEMS))
    reference = ActivationCache.open(write(tmp_path / "a", items_per_shard=4))
    cache = ActivationCache.open(write(tmp_path / "b", shuffled, items_per_shard=3))
    assert_same(cache, reference)
    subset = ["item-007", "item-002", "item-005"]
    np.testing.assert_array_equal(cache.read("llm.layers.4", items=subset), expected("llm.layers.4", [2, 5, 7]))
    table = cache.row_table(items=subset)
    assert sorted(set(table["item"].tolist())) == [2, 5, 7]
    np.testing.assert_array_equal(cache.read("enc.layers.0", items="item-004"), expected("enc.layers.0", [4]))


_KILLED_WRITER = """
import json, os, sys
from pathlib import Path
from tests.test_store import header, make_item
from activations import CacheWriter
path = Path(sys.argv[1])
writer = CacheWriter.open(path, header("float16"), items_per_shard=3)
for i in range(7):                      # two complete shards (items 0-5), item 6 still buffered
    writer.add(*make_item(i))
(path / ".shard-r0of1-00002.h5.tmp").write_bytes(b"half a shard")    # the shard being written at the kill
manifest = json.loads((path / "manifest.json").read_text())
manifest["shards"] = manifest["shards"][:1]                          # and the last manifest update was lost
(path / "manifest.json").write_text(json.dumps(manifest))
os._exit(9)
"""


def test_resume_after_a_killed_writer_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    path = tmp_path / "c"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == 9, killed.stderr
    assert (path / ".shard-r0of1-00002.h5.tmp").exists()
    with CacheWriter.open(path, header("float16"), items_per_shard=3) as writer:
        assert writer.done == {f"item-{i:03d}" for i in range(6)}
        assert not (path / ".shard-r0of1-00002.h5.tmp").exists()
        for i in range(N_ITEMS):
            if f"item-{i:03d}" not in writer.done:
                writer.add(*make_item(i))
    report = verify(path)
    assert report.ok, report.problems
    assert report.items == N_ITEMS
    assert_same(ActivationCache.open(path), ActivationCache.open(write(tmp_path / "ref", dtype="float16")))


def test_reader_sees_new_shards_after_refresh(tmp_path: Path) -> None:
    path = tmp_path / "c"
    writer = CacheWriter.open(path, header(), items_per_shard=2)
    reader = ActivationCache.open(path)  # the header is there before any shard
    assert len(reader) == 0 and reader.rows == 0 and reader.read("enc.layers.0").shape == (0, 8)
    for i in range(5):
        writer.add(*make_item(i))
    assert len(reader) == 0
    assert len(reader.refresh()) == 4  # two complete shards; item 4 is still buffered
    np.testing.assert_array_equal(reader.read("llm.layers.4"), expected("llm.layers.4", range(4)))
    writer.close()
    assert len(reader.refresh()) == 5


def test_header_mismatch_needs_overwrite(tmp_path: Path) -> None:
    path = write(tmp_path / "c")
    (path / "notes.txt").write_text("mine")
    other = header("float16", sites={"enc.layers.0": 8, "llm.layers.6": 16})
    with pytest.raises(CacheMismatch) as caught:
        CacheWriter.open(path, other)
    message = str(caught.value)
    assert "\n" not in message and "--overwrite" in message
    assert "dtype 'float32' (cache) vs 'float16' (requested)" in message and "llm.layers.6[16]" in message
    # Provenance alone is no mismatch: the same configuration resumes.
    with CacheWriter.open(path, header(command="another run")) as writer:
        assert len(writer.done) == N_ITEMS
    with CacheWriter.open(path, other, overwrite=True) as writer:
        assert writer.done == set()
        meta, rows = make_item(0)
        rows.sites["llm.layers.6"] = rows.sites.pop("llm.layers.4")
        writer.add(meta, rows)
    cache = ActivationCache.open(path)
    assert cache.sites == ["enc.layers.0", "llm.layers.6"] and len(cache) == 1 and cache.dtype == "float16"
    assert (path / "notes.txt").read_text() == "mine"
    assert verify(path).ok


def test_one_writer_per_rank(tmp_path: Path) -> None:
    with CacheWriter.open(tmp_path / "c", header()):
        with pytest.raises(CacheError, match="another writer"):
            CacheWriter.open(tmp_path / "c", header())
    CacheWriter.open(tmp_path / "c", header()).close()


def test_two_ranks_and_finalize_equal_a_single_run(tmp_path: Path) -> None:
    path = tmp_path / "c"
    write(path, range(0, N_ITEMS, 2), rank=0, world=2, items_per_shard=2)
    write(path, range(1, N_ITEMS, 2), rank=1, world=2, items_per_shard=2)
    assert {p.name for p in path.glob("manifest*.json")} == {"manifest.r0of2.json", "manifest.r1of2.json"}
    before = verify(path)
    assert not before.ok and "finalize" in before.problems[0]
    single = ActivationCache.open(write(tmp_path / "single"))
    assert_same(ActivationCache.open(path), single)  # readable before finalize, from the shards on disk
    assert finalize(path) == path / MANIFEST
    assert [p.name for p in path.glob("manifest*.json")] == [MANIFEST]
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["rank_provenance"]) == {"r0of2", "r1of2"} and len(manifest["shards"]) == 6
    report = verify(path)
    assert report.ok, report.problems
    assert_same(ActivationCache.open(path), single)
    # With more writers than items a rank can be empty; it still has to report in.
    write(tmp_path / "sparse", range(N_ITEMS), rank=0, world=2)
    with pytest.raises(CacheError, match=r"r1of2 missing"):
        finalize(tmp_path / "sparse")


def test_finalize_refuses_missing_or_unfinished_ranks(tmp_path: Path) -> None:
    path = write(tmp_path / "c", range(0, N_ITEMS, 3), rank=0, world=3)
    with pytest.raises(CacheError, match=r"r1of3, r2of3 missing"):
        finalize(path)
    with pytest.raises(RuntimeError):
        with CacheWriter.open(path, header(rank=1), rank=1, world=3) as writer:
            writer.add(*make_item(1))
            raise RuntimeError("killed")
    with pytest.raises(CacheError, match=r"r2of3 missing.*r1of3 unfinished"):
        finalize(path)
    assert not (path / MANIFEST).exists()


def test_verify_finds_a_damaged_and_a_missing_shard(tmp_path: Path) -> None:
    path = write(tmp_path / "c")
    shard = path / "shard-r0of1-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (path / "shard-r0of1-00002.h5").unlink()
    report = verify(path)
    assert not report.ok
    assert any("shard-r0of1-00001.h5: sha256" in p for p in report.problems), report.problems
    assert any("shard-r0of1-00002.h5, which is missing" in p for p in report.problems), report.problems


def test_export_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path / "c", list(reversed(range(N_ITEMS))), dtype="bfloat16", items_per_shard=4)
    out = export(path, tmp_path / "out" / "all.h5")
    assert out.is_file() and not list(out.parent.glob(".*.tmp"))
    exported = ActivationCache.open(out)
    assert exported.header == ActivationCache.open(path).header
    assert_same(exported, ActivationCache.open(path))
    summary = info(out)
    assert summary["items"] == N_ITEMS and summary["sites"] == SITES and summary["dtype"] == "bfloat16"


def test_iter_batches_concatenate_to_read(tmp_path: Path) -> None:
    path = tmp_path / "c"
    write(path, range(0, N_ITEMS, 2), rank=0, world=2, items_per_shard=2)
    write(path, range(1, N_ITEMS, 2), rank=1, world=2, items_per_shard=2)
    cache = ActivationCache.open(path)
    batches = list(cache.iter_batches("llm.layers.4", batch_rows=12))
    assert len(batches) > 3 and all(len(x) <= 12 for x, _ in batches)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), cache.read("llm.layers.4"))
    full = cache.row_table()
    for key in full:
        np.testing.assert_array_equal(np.concatenate([meta[key] for _, meta in batches]), full[key])
    one = list(cache.iter_batches("enc.layers.0", batch_rows=1))  # an item larger than a batch is one batch
    assert len(one) == N_ITEMS


def test_unknown_site_item_and_folder_fail_with_one_line(tmp_path: Path) -> None:
    cache = ActivationCache.open(write(tmp_path / "c"))
    with pytest.raises(CacheError, match=r"unknown site 'llm\.layers\.9'; this cache holds enc\.layers\.0, llm"):
        cache.read("llm.layers.9")
    with pytest.raises(CacheError, match="unknown site"):
        cache.iter_batches("nope")
    with pytest.raises(CacheError, match=r"'item-999'"):
        cache.read("enc.layers.0", items=["item-001", "item-999"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="not an activation cache"):
        ActivationCache.open(tmp_path / "empty")
    with pytest.raises(CacheError, match="no activation cache"):
        ActivationCache.open(tmp_path / "absent")
    with pytest.raises(ValueError, match="not in the cache header"):
        with CacheWriter.open(tmp_path / "d", header()) as writer:
            meta, rows = make_item(0)
            rows.sites["llm.layers.9"] = rows.sites["llm.layers.4"]
            writer.add(meta, rows)
    with pytest.raises(CacheError, match="unknown cache dtype"):
        header("float8")
    assert info(tmp_path / "c")["git_commit"] is None and info(tmp_path / "c")["rows"] == cache.rows
