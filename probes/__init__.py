"""Probes on activation caches: energy, pitch, CTC text decodability, bag-of-characters (see DESIGN.md).

The probes land with the probes issue; this package is the place they live, so that the import
layout of the distribution is fixed from the start.
"""

from __future__ import annotations

__all__: list[str] = []
