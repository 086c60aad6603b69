"""Activation caches: hooks on a model's named sites, written to sharded HDF5 (see DESIGN.md).

The extraction loop and the store land with the activation-cache issue; this package is the place
they live, so that the import layout of the distribution is fixed from the start.
"""

from __future__ import annotations

__all__: list[str] = []
