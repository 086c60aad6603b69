"""Session fixtures: small spoken sets built once through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.fixture(scope="session")
def sentiment_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-item piper-spoken sentiment set."""
    out = tmp_path_factory.mktemp("sets") / "sentiment"
    result = run_cli("data", "synth", "sentiment", "--n", "12", "--seed", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    return out
