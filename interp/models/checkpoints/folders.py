"""Checkpoint folders as save_pretrained writes them: found, checked and loaded strictly.

Every load is strict: a weight the model lacks, a checkpoint key the model does not use, or a shape that
does not fit raises one clear error, because a silently random-initialised weight would make every
analysis of the model meaningless. Weights are read from safetensors only (no pickle), and nothing reaches
a model hub (`local_files_only=True`) or runs remote code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from interp.errors import InterpError
from interp.models.checkpoints.options import LoadOptions
from interp.models.weights import WeightsMissing

__all__ = ["weight_files", "checkpoint_folder", "config_dict", "expect_model_type", "listed", "check_loading",
           "check_fit", "pretrained", "tokenizer_of", "has_tokenizer", "read_tensors"]

_CONFIG = "config.json"
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SHOWN_KEYS = 3
"""How many offending keys an error names."""


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: model.safetensors, or the shards its index lists."""
    if (folder / _SAFETENSORS).is_file():
        return [folder / _SAFETENSORS]
    index = folder / _SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = list(dict.fromkeys(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            raise WeightsMissing(f"{index} is not a safetensors index (no weight_map): {error}") from error
        for shard in shards:
            if not (folder / shard).is_file():
                raise WeightsMissing(f"{folder}: shard {shard}, listed in {_SAFETENSORS_INDEX}, is missing")
        return [folder / shard for shard in shards]
    if any(folder.glob("pytorch_model*.bin")):
        raise WeightsMissing(f"{folder} holds only pickle weights (pytorch_model*.bin); this toolkit reads "
                             f"safetensors only: re-save it with save_pretrained, which writes {_SAFETENSORS}")
    raise WeightsMissing(f"{folder} has no weights: expected {_SAFETENSORS} or {_SAFETENSORS_INDEX} beside "
                         f"{_CONFIG}")


def checkpoint_folder(path: Path, what: str) -> Path:
    """`path` resolved, once it is a folder with config.json and safetensors weights; else WeightsMissing."""
    expected = f"a {what} checkpoint folder ({_CONFIG} + {_SAFETENSORS}, as save_pretrained writes them)"
    if not path.exists():
        raise WeightsMissing(f"{path} does not exist; expected {expected}")
    if not path.is_dir():
        raise WeightsMissing(f"{path} is a file; expected {expected}")
    if not (path / _CONFIG).is_file():
        raise WeightsMissing(f"{path} has no {_CONFIG}, so it is not {expected}")
    weight_files(path)
    return path.resolve()


def config_dict(folder: Path) -> dict:
    """The folder's config.json as a dict; WeightsMissing when it is not a JSON object."""
    try:
        raw = json.loads((folder / _CONFIG).read_text(encoding="utf-8"))
    except ValueError as error:
        raise WeightsMissing(f"{folder / _CONFIG} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise WeightsMissing(f"{folder / _CONFIG} is not a JSON object")
    return raw


def expect_model_type(folder: Path, expected: str, *, what: str) -> None:
    """Refuse a folder whose config.json names another model_type than `expected`."""
    found = config_dict(folder).get("model_type")
    if found != expected:
        raise InterpError(f"{folder} holds a model_type {found!r} model, not {expected!r}: expected {what}")


def listed(keys: Iterable[object]) -> str:
    """The first few keys, sorted, and how many there are in all."""
    keys = sorted(map(str, keys))
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")


def check_loading(info: dict, where: str) -> None:
    """Refuse a `from_pretrained` load that left weights random, ignored checkpoint keys or hit wrong shapes."""
    problems = [(info["missing_keys"], "weights missing from the checkpoint"),
                (info["unexpected_keys"], "checkpoint keys the model does not use"),
                ({key[0] for key in info["mismatched_keys"]}, "weights of the wrong shape")]
    found = [f"{what}: {listed(keys)}" for keys, what in problems if keys] + list(info["error_msgs"][:1])
    if found:
        raise WeightsMissing(f"{where}: {'; '.join(found)}")


def pretrained(cls: type, folder: Path, options: LoadOptions) -> PreTrainedModel:
    """`cls.from_pretrained(folder)` in the options' dtype and placement, strictly, in eval mode."""
    model, info = cls.from_pretrained(folder, dtype=options.torch_dtype, device_map=options.placement,
                                      local_files_only=True, trust_remote_code=False, output_loading_info=True)
    check_loading(info, str(folder))
    return model.eval()


def tokenizer_of(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `folder`, read locally."""
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def has_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer (tokenizer.json or tokenizer_config.json)."""
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def read_tensors(files: Sequence[Path], *, keep: Callable[[str], bool] = lambda key: True) -> dict[str, Tensor]:
    """The tensors of safetensors files whose key passes `keep` (others are never read)."""
    tensors: dict[str, Tensor] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                if keep(key):
                    tensors[key] = handle.get_tensor(key)
    return tensors


def check_fit(tensors: dict[str, Tensor], shapes: dict[str, torch.Size], where: str) -> None:
    """Every checkpoint tensor has a place of the same shape in the model."""
    unexpected = tensors.keys() - shapes.keys()
    if unexpected:
        raise WeightsMissing(f"{where}: checkpoint keys the model does not use: {listed(unexpected)}")
    wrong = [f"{key} {tuple(value.shape)} ≠ {tuple(shapes[key])}" for key, value in tensors.items()
             if value.shape != shapes[key]]
    if wrong:
        raise WeightsMissing(f"{where}: weights of the wrong shape: {listed(wrong)}")
