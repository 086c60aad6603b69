"""Ultravox, implemented here: Whisper encoder → stacking projector → causal LLM.

fixie-ai's remote code does not run on transformers 5.x, so the architecture is rebuilt after
fixie-ai/ultravox (ultravox/model/ultravox_model.py) with the same state-dict keys
(`audio_tower.*`, `multi_modal_projector.*`, `language_model.*`), so that a real checkpoint loads.

- The encoder is transformers' WhisperEncoder, but accepts fewer than 3000 mel frames (the position
  table is sliced, as Ultravox does) and masks padded frames of a batch as attention keys.
- The projector stacks `stack_factor` (8) encoder frames → RMSNorm → Linear → SwiGLU → RMSNorm (v0.5+:
  `projector_ln_mid`; else after the second Linear) → Linear. One audio token covers
  2 × 8 mel frames = 160 ms.
- Audio embeddings are written over `audio_token_len` placeholder positions starting at
  `audio_token_start_idx`; the placeholder id is the tokenizer's eos token (Ultravox's choice), which is
  why audio positions are found by start and length, never by token id.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, WhisperConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.whisper.modeling_whisper import WhisperEncoder

__all__ = ["UltravoxConfig", "UltravoxModel", "UltravoxProjector", "audio_token_count", "ENCODER_DOWNSAMPLING"]

ENCODER_DOWNSAMPLING = 2
"""Whisper's second convolution has stride 2: one encoder frame per two 10 ms mel frames."""


def audio_token_count(mel_frames: int, *, stack_factor: int) -> int:
    """Audio positions in the LLM for an input of `mel_frames`: ceil(frames / (2 · stack_factor))."""
    return math.ceil(mel_frames / (ENCODER_DOWNSAMPLING * stack_factor))


class UltravoxConfig(PretrainedConfig):
    """Ultravox's config, with fixie-ai's field names so their config.json reads unchanged."""

    model_type = "ultravox"
    sub_configs = {"audio_config": WhisperConfig, "text_config": PretrainedConfig}

    def __init__(self, audio_config: dict | PretrainedConfig | None = None,
                 text_config: dict | PretrainedConfig | None = None, *, hidden_size: int = 4096,
                 stack_factor: int = 8, norm_init: float = 0.4, projector_act: str = "swiglu",
                 projector_ln_mid: bool = False, audio_model_id: str | None = None,
                 text_model_id: str | None = None, **kwargs: object) -> None:
        from transformers import CONFIG_MAPPING

        if isinstance(audio_config, dict):
            audio_config = WhisperConfig(**{k: v for k, v in audio_config.items() if k != "model_type"})
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config.get("model_type", "llama")](
                **{k: v for k, v in text_config.items() if k != "model_type"})
        # Copies: PretrainedConfig.__init__ resets the sub-configs' attention implementation (transformers
        # 5.24), which would switch a shared, already-loaded LLM from sdpa to the fallback path.
        self.audio_config = copy.deepcopy(audio_config) if audio_config is not None else WhisperConfig()
        self.text_config = copy.deepcopy(text_config) if text_config is not None else CONFIG_MAPPING["llama"]()
        self.hidden_size = hidden_size
        self.stack_factor = stack_factor
        self.norm_init = norm_init
        self.projector_act = projector_act
        self.projector_ln_mid = projector_ln_mid
        self.audio_model_id = audio_model_id
        self.text_model_id = text_model_id
        super().__init__(**kwargs)


class _SwiGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


class UltravoxProjector(nn.Module):
    """Encoder frames (batch, frames, d_audio) → audio embeddings (batch, ceil(frames/8), d_llm)."""

    def __init__(self, config: UltravoxConfig) -> None:
        super().__init__()
        if config.projector_act != "swiglu":
            raise ValueError(f"only the swiglu projector is implemented, not {config.projector_act!r}")
        self.stack_factor = config.stack_factor
        dim_in = config.audio_config.d_model * config.stack_factor
        dim_mid = config.hidden_size // 2
        dim_out = config.text_config.hidden_size
        self.ln_pre = LlamaRMSNorm(dim_in, eps=1e-6)
        self.linear_1 = nn.Linear(dim_in, config.hidden_size, bias=False)
        self.act = _SwiGLU()
        self.linear_2 = nn.Linear(dim_mid, dim_out, bias=False)
        self.ln_mid: nn.Module = LlamaRMSNorm(dim_mid, eps=1e-6) if config.projector_ln_mid else nn.Identity()
        self.ln_post: nn.Module = nn.Identity() if config.projector_ln_mid else LlamaRMSNorm(dim_out, eps=1e-6)
        self.norm_init = config.norm_init
        self.reset_norms()

    def reset_norms(self) -> None:
        """Ultravox starts its RMSNorm gains at norm_init (0.4), not at 1."""
        for norm in (self.ln_pre, self.ln_mid, self.ln_post):
            if isinstance(norm, LlamaRMSNorm):
                norm.weight.data.fill_(self.norm_init)

    def forward(self, audio_features: Tensor) -> Tensor:
        batch, frames, channels = audio_features.shape
        padded = math.ceil(frames / self.stack_factor) * self.stack_factor
        stacked = F.pad(audio_features, (0, 0, 0, padded - frames)).reshape(
            batch, padded // self.stack_factor, channels * self.stack_factor)
        hidden = self.linear_1(self.ln_pre(stacked))
        hidden = self.ln_mid(self.act(hidden))
        return self.ln_post(self.linear_2(hidden))


class _ShortWhisperEncoder(WhisperEncoder):
    """WhisperEncoder that takes up to 3000 mel frames and masks each item's padded frames.

    With audio_lens, an item's output does not depend on the batch it is in: its padded mel frames are zeroed
    before each convolution (which then sees what its zero padding shows at the end of an unpadded clip),
    attention ignores them, and the states past its last valid frame are zeroed (the projector's frame
    stacking then pads its last row with zeros, as for a clip alone). fixie-ai's encoder masks attention
    only, so there an item's last rows vary with the padding its batch adds."""

    def forward(self, input_features: Tensor, audio_lens: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """input_features: (batch, mels, frames ≤ 3000); audio_lens: (batch,) valid mel frames.
        Returns the final encoder states (batch, ceil(frames/2), d_audio)."""
        limit = self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]
        if input_features.shape[-1] > limit:
            raise ValueError(f"at most {limit} mel frames (30 s) per item, got {input_features.shape[-1]}")
        valid = None
        frames = torch.ones_like(input_features[:, :1, :])
        if audio_lens is not None:
            positions = torch.arange(input_features.shape[-1], device=input_features.device)
            frames = (positions[None, :] < audio_lens[:, None])[:, None, :].to(input_features.dtype)
        hidden = F.gelu(self.conv1(input_features * frames)) * frames
        hidden = F.gelu(self.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + self.embed_positions.weight[: hidden.shape[1]]
        mask = None
        if audio_lens is not None:
            valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < \
                ((audio_lens - 1) // ENCODER_DOWNSAMPLING + 1)[:, None]
            mask = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
            mask = mask.masked_fill(~valid, torch.finfo(hidden.dtype).min)[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, mask)
        hidden = self.layer_norm(hidden)
        return hidden if valid is None else hidden * valid[..., None]


class UltravoxModel(PreTrainedModel):
    """Ultravox with fixie-ai's module names; `forward` returns the LLM's CausalLMOutput."""

    config_class = UltravoxConfig
    base_model_prefix = ""
    _no_split_modules = ["WhisperEncoderLayer", "LlamaDecoderLayer"]

    def __init__(self, config: UltravoxConfig, *, language_model: PreTrainedModel | None = None) -> None:
        """language_model: an already-loaded LLM to use as is (saves building and initialising a random one)."""
        super().__init__(config)
        if config.audio_config._attn_implementation is None:  # sub-configs are not dispatched (transformers 5.24)
            config.audio_config._attn_implementation = "sdpa"
        self.audio_tower = _ShortWhisperEncoder(config.audio_config)
        self.multi_modal_projector = UltravoxProjector(config)
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        if language_model is None:
            self.post_init()
        self.multi_modal_projector.reset_norms()  # post_init sets every RMSNorm gain to 1

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def embed(self, input_ids: Tensor, audio_values: Tensor, audio_lens: Tensor,
              audio_token_start_idx: Tensor, audio_token_len: Tensor) -> Tensor:
        """Token embeddings with each item's audio embeddings written over its placeholder span.

        input_ids: (batch, seq); audio_values: (batch, mels, frames); audio_lens, audio_token_start_idx,
        audio_token_len: (batch,). Returns (batch, seq, d_llm) in the LLM's dtype.
        """
        embeds = self.get_input_embeddings()(input_ids)
        audio = self.multi_modal_projector(self.audio_tower(audio_values.to(self.audio_tower.dtype), audio_lens))
        audio = audio.to(embeds.dtype)
        rows = []
        for index in range(embeds.shape[0]):
            start, length = int(audio_token_start_idx[index]), int(audio_token_len[index])
            rows.append(torch.cat([embeds[index, :start], audio[index, :length], embeds[index, start + length:]]))
        return torch.stack(rows)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, audio_values: Tensor, audio_lens: Tensor,
                audio_token_start_idx: Tensor, audio_token_len: Tensor, **kwargs: object):
        embeds = self.embed(input_ids, audio_values, audio_lens, audio_token_start_idx, audio_token_len)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
