"""LEACE concept erasure: fit on cached audio rows, apply with hooks during the forward pass and generation.

The shapes are concept-erasure's `leace.py` (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in
closed form"): a streaming fitter and a small frozen eraser. Modules, one job each:

* `concepts`: the label z of each audio row, a table of small labelling functions (chars, text, boc, energy,
  pitch), aligned by each row's time span in the item's audio (`alignment`: rows to words, words to tokens);
* `eraser`: `SiteEraser` (x ↦ x − ((x − b) Rᵀ) Lᵀ, the one place the formula is written), `Eraser` (per-site
  erasers of one concept) and its safetensors file;
* `fitter`: `SiteFitter`, LeaceFitter's streaming `update(x, z)` for one site, the seeded random control (nested
  bases; matched by rank, or by raw variance removed: `random_matching_variance`);
* `fit`: `fit_eraser`, a cache and a spoken set → an `Eraser` with its provenance;
* `apply`: `apply_eraser`, the eraser in force at audio (or all) positions, through activations' edit hooks.

Answering a spoken set with an eraser in force (the behaviour harness) is interp.erasure_eval's
`evaluate_erasure`; sweeps over concepts and layers are interp.erasure_sweep's.
"""

from __future__ import annotations

from interp.erasure.apply import ActiveErasure, Positions, apply_eraser
from interp.erasure.concepts import CONCEPTS, SITE_CHARS, ConceptLabels, ConceptName, concept_labels
from interp.erasure.eraser import FORMAT, FORMAT_VERSION, Eraser, SiteEraser
from interp.erasure.fit import MatchBy, fit_eraser
from interp.erasure.fitter import SiteFitter

__all__ = [
    "CONCEPTS", "ConceptName", "Positions", "FORMAT", "FORMAT_VERSION", "ConceptLabels", "SiteEraser", "Eraser",
    "SITE_CHARS", "SiteFitter", "ActiveErasure", "concept_labels", "fit_eraser", "apply_eraser", "MatchBy",
]
