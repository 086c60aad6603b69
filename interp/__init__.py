"""cascade-interp: does an end-to-end speech LLM use the audio, or is it an ASR -> LLM cascade in disguise?"""

from __future__ import annotations

from interp.errors import InterpError

__all__ = ["InterpError"]
__version__ = "0.1.0"
