"""Speech LLMs, cascades and their parts behind one protocol (see interp.models.base)."""

from __future__ import annotations

__all__: list[str] = []
