"""Session fixtures: small spoken sets built once through the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli


@pytest.fixture(scope="session")
def sentiment_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-item piper-spoken sentiment set (made with the global --threads option, which its provenance records)."""
    out = tmp_path_factory.mktemp("sets") / "sentiment"
    result = run_cli("--threads", "1", "data", "synth", "sentiment", "--n", "12", "--seed", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def tiny_cache(sentiment_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`interp extract` of tiny-ultravox on the set's first 2 items: projector, llm.embed and every LLM layer at the
    audio positions, float32. Shared by several test files: read it, never write into it."""
    out = tmp_path_factory.mktemp("tiny-cache") / "cache"
    made = run_cli("extract", "--model", "tiny-ultravox", "--data", sentiment_set, "--out", out, "--sites",
                   "projector,llm.embed,llm.layers.*", "--dtype", "float32", "--limit", "2")
    assert made.returncode == 0, made.stderr
    return out


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small torch ops (CTC probes, LEACE on tiny data): a second intra-op thread only adds scheduling
    waits on a busy 2-core machine. Use with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
