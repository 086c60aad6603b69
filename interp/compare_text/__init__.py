"""Speech vs text inside one LLM: the speech model's states at a word's audio positions against its own LLM's
states at that word's tokens when it reads the transcript, layer by layer (`interp compare-text`).

* `text_side`: the text LLM of a speech system (`text_llm_of`), the transcript in the cache's task prompt,
  its token rows with character spans, cached in `text_states.h5`;
* `align`: each timed word's audio rows (by time overlap) and text tokens (by character overlap);
* `measures`: linear CKA and the cross-modal bag-of-characters probe on the word means;
* `run` and `figure`: the analysis over a cache's layers, its JSON and its plotly figure.
"""

from __future__ import annotations

from interp.compare_text.align import WordAlignment, align_words, word_spans
from interp.compare_text.figure import compare_text_figure
from interp.compare_text.measures import ProbeScores, cross_modal_probe, linear_cka, shuffled_cka, split_items
from interp.compare_text.run import FIGURE, RESULTS, cache_prompt_for, compare_text, write_compare_text
from interp.compare_text.text_side import TEXT_STATES, TextStates, text_llm_of, text_states, transcript_tokens

__all__ = [
    "FIGURE", "RESULTS", "TEXT_STATES", "ProbeScores", "TextStates", "WordAlignment", "align_words",
    "cache_prompt_for", "compare_text", "compare_text_figure", "cross_modal_probe", "linear_cka", "shuffled_cka",
    "split_items", "text_llm_of", "text_states", "transcript_tokens", "word_spans", "write_compare_text",
]
