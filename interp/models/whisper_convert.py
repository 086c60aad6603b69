"""CTranslate2 Whisper files as a transformers Whisper: the weights, the processor and the generation config.

The weight carriers ship faster-whisper models (CTranslate2 `model.bin`, float16), which hooks and
activation patching cannot reach. `convert_ct2_whisper` rewrites one into a transformers
`WhisperForConditionalGeneration` state dict (fused attention projections split, layer norms,
embeddings and convolutions renamed); `whisper_processor` and `whisper_generation_config` read the
carrier's tokenizer and decoding options beside it. Everything here reads files and writes nothing.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperProcessor,
    WhisperTokenizer,
)

from interp.data.audio import SAMPLE_RATE
from interp.models.weights import WeightsMissing

__all__ = ["WINDOW_SECONDS", "convert_ct2_whisper", "whisper_processor", "whisper_generation_config"]

WINDOW_SECONDS = 30
"""Whisper sees 30 s windows: shorter audio is padded with silence to 3000 mel frames."""

_CT2_BINARY_VERSION = 6
_CT2_SPEC = ("WhisperSpec", 3)
_CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
"""CTranslate2's DataType enum order (include/ctranslate2/types.h, specs/model_spec.py)."""
_GELU = 3
"""common_spec.Activation.GELU: the exact (erf) GELU, transformers' "gelu"."""
_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/")


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
    variables = _Variables(ct2, where)
    flags = {name: int(variables.pop(name)) for name in ("decoder/activation", "decoder/pre_norm",
                                                          "decoder/scale_embeddings", "decoder/alibi")}
    if flags != {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                 "decoder/alibi": 0}:
        raise WeightsMissing(f"{where}: decoder settings {flags} are not Whisper's")
    for unused in ("decoder/alignment_heads", "decoder/alignment_layer", "decoder/start_from_zero_embedding"):
        ct2.pop(unused, None)  # word-timestamp and decoding options, not weights
    heads = {side: int(variables.pop(f"{side}/num_heads")) for side in ("encoder", "decoder")}
    layers = {side: 1 + max((int(m[2]) for m in map(_LAYER.match, ct2) if m and m[1] == side), default=-1)
              for side in ("encoder", "decoder")}
    out = _renamed(variables, layers)
    if ct2:
        raise WeightsMissing(f"{where}: variables this converter does not know: {', '.join(sorted(ct2))}")
    return out, _config(out, heads, layers, _special_tokens(tokenizer_json))


class _Variables:
    """The CT2 variables still to convert: each is taken once, and one that is missing names the file."""

    def __init__(self, ct2: dict[str, torch.Tensor], where: str) -> None:
        self.ct2, self.where = ct2, where

    def pop(self, name: str) -> torch.Tensor:
        if name not in self.ct2:
            raise WeightsMissing(f"{self.where} has no variable {name}: not a CTranslate2 Whisper model")
        return self.ct2.pop(name)

    def take(self, name: str) -> torch.Tensor:
        return self.pop(name).float()


def _renamed(variables: _Variables, layers: dict[str, int]) -> dict[str, torch.Tensor]:
    """The weights under transformers' names: fused linears split into equal row blocks, norms, embeddings."""
    out: dict[str, torch.Tensor] = {}
    take = variables.take

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
    projection = variables.pop("decoder/projection/weight")
    if not torch.equal(projection.float(), out["model.decoder.embed_tokens.weight"]):
        raise WeightsMissing(f"{variables.where}: the output projection is not tied to the token embedding, "
                             "unlike Whisper")
    out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    return out


def _config(out: dict[str, torch.Tensor], heads: dict[str, int], layers: dict[str, int],
            special: dict[str, int]) -> WhisperConfig:
    """transformers' WhisperConfig of the converted weights: every size read from them."""
    d_model, mel_bins, _ = out["model.encoder.conv1.weight"].shape
    vocab, eot = out["model.decoder.embed_tokens.weight"].shape[0], special["<|endoftext|>"]
    return WhisperConfig(
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


def _is_multilingual(config: WhisperConfig) -> bool:
    """OpenAI's rule (whisper/model.py, also CTranslate2's): English-only models have 51864 tokens."""
    return config.vocab_size >= 51865


def whisper_processor(meta: Path, config: WhisperConfig) -> WhisperProcessor:
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


def whisper_generation_config(meta: Path, config: WhisperConfig) -> GenerationConfig:
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
