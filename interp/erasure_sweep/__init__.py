"""Erasure sweeps: concepts × layer sets × tasks → one table (CSV + JSON) and one figure (HTML), resumable.

For each spoken set:
1. cache: the model's `llm.layers.{i}` for the union of the layer sets at audio positions (activations.extract),
   in cache_dir/<set>; skipped when the cache already holds every item;
2. split: the first `limit` items are split by a seeded draw, stratified by task and label, into a FIT half and
   an EVAL half (split "half", default); erasers are fitted on the fit half's cache rows only
   (fit_eraser(items=...)) and every system answers the eval half only, so erasure is tested on utterances
   the eraser never saw. Split "none" fits and evaluates on all items (the table header then says so);
3. erasers: per concept one fit over the union of the layer sets' sites; a LEACE eraser is fitted site by site
   (and the random control is seeded per site), so the eraser of a layer set is exactly the union's restricted
   to its sites. Saved as RUN/erasers/<set>-<concept>-<layers>.safetensors; skipped when the file exists;
4. clean baseline: interp.behavior.run_system with no eraser → RUN/<model>/<set>.jsonl;
5. erased runs: interp.erasure_eval.evaluate_erasure → RUN/<model>+erase-<concept>-L<layers>/<set>.jsonl; every
   predictions file is skipped when its sidecar says status done for the expected items.

Concepts are specs (`specs`): a concept (``text``, ``chars``, …), a rank sweep (``text@8``; `ranks` expands
``text,random`` over 4, 8, 16, 32, …) and three random controls side by side: ``random`` (whitened, matched rank),
``random-raw`` (raw space, matched rank) and ``random-var`` (raw space, the smallest rank that removes as much raw
variance as text does at each site). Rank alone does not match a control when rank is not ≪ d.

Outputs: RUN/sweep.csv, RUN/sweep.json (rows: set, task, concept, rank asked, layers, mean fitted rank per layer,
share of d, share of raw variance removed, accuracy with 95 % bootstrap CI, Δ vs clean with paired bootstrap CI,
chance level; plus config and provenance), RUN/sweep.html (plotly, self-contained; accuracy vs rank when the
sweep has ranks). A rerun with the same plan recomputes nothing; more
concepts or layer sets add rows; another model, limit, split, seed, positions or random match into the same
RUN is refused. Used by `interp erase sweep` and by the study's erasure stage.

Modules: `specs` (concept specs), `plan` (SweepPlan, checked where it enters), `stages` (run_sweep and its
resumable stages), `outputs` (the rows, the table, the figure and the files).
"""

from __future__ import annotations

from interp.erasure_sweep.outputs import format_table, header_line, sweep_figure
from interp.erasure_sweep.plan import CONCEPT_ORDER, SweepError, SweepPlan
from interp.erasure_sweep.specs import ConceptSpec, expand_concepts, parse_concept
from interp.erasure_sweep.stages import run_sweep

__all__ = ["SweepError", "SweepPlan", "run_sweep", "format_table", "header_line", "sweep_figure", "CONCEPT_ORDER",
           "ConceptSpec", "parse_concept", "expand_concepts"]
