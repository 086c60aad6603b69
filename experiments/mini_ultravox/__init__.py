"""Projector training of mini-ultravox (Whisper-base's encoder → Ultravox projector → SmolLM2-135M-Instruct).

The scripts here made `interp/resources/mini_ultravox_projector.safetensors`; see README.md beside this file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA"]

DATA = Path(__file__).resolve().parent / "data"
"""The sentence lists these scripts read: the shipped projector's training list (sentences.json.gz) and its
held-out utterances (mini_ultravox_heldout.json, mini_ultravox_heldout_more.json), described in data/README.md."""
