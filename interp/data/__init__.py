"""Spoken task sets: records, TTS, importers, built-in suites, babble noise."""

from __future__ import annotations

from interp.data.manifest import Item, Noise, Source, Speech, SpokenSet, Word

__all__ = ["Item", "Noise", "Source", "Speech", "SpokenSet", "Word"]
