"""The RMSNorm logit lens on cached activations, its bag-of-tokens scores, and the implicit cascade's lens text.

One idea per module, in the shapes of tuned-lens (`tuned_lens/nn/unembed.py`, `lenses.py`):

* `unembed`: `Unembed`, the model's own final norm and unembedding, read-only: logits = W_U · RMSNorm_final(h);
* `logit_lens`: `logit_lens` streams a cache's audio rows of `llm.layers.{i}` through it in chunks of rows and
  keeps the top-k tokens (`LensResult`);
* `tokens`: `TokenNormalizer`, which lens tokens count as words and as which word (NORMALISATION_RULE);
* `scores`: bag-of-tokens precision and recall against each transcript, by layer with bootstrap CIs;
* `implicit`: an item's lens text, and `implicit_cascade`, the system (interp.models.implicit_cascade) that
  answers the task from it when the behaviour harness runs it;
* `results` and `figures`: the JSON of `interp lens` and its two plotly figures.
"""

from __future__ import annotations

from interp.lens.figures import precision_figure, strip_figure
from interp.lens.implicit import LENS_TEXT_RULE, implicit_cascade, lens_text
from interp.lens.logit_lens import LayerLens, LensResult, logit_lens
from interp.lens.results import lens_report, write_report
from interp.lens.scores import PRECISION_RULE, LayerScore, LensScores, TokenScore, score_lens, token_score
from interp.lens.tokens import NORMALISATION_RULE, TokenNormalizer
from interp.lens.unembed import DEFAULT_CHUNK_ROWS, Unembed

__all__ = [
    "DEFAULT_CHUNK_ROWS", "NORMALISATION_RULE", "PRECISION_RULE", "LENS_TEXT_RULE",
    "Unembed", "LayerLens", "LensResult", "logit_lens", "TokenNormalizer", "TokenScore", "token_score", "LayerScore",
    "LensScores", "score_lens", "lens_text", "implicit_cascade", "lens_report", "write_report", "precision_figure",
    "strip_figure",
]
