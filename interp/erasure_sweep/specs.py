"""A sweep's concept specs: a concept, or a concept with a rank (``text@8``), and the three random controls.

Rank alone does not match a control. The matched-rank random control assumes rank ≪ d; at d = 576 (mini-ultravox)
random erasers of rank 32 at many layers already hurt, and text LEACE of rank 32 removes ~40 % of the audio rows'
raw variance while the whitened random control of the same rank removes ~5 %. So a sweep can put, side by side:

* ``text@K`` — text LEACE with the K most frequent tokens + other (``text_classes`` = K): it removes ≤ K
  directions (the fitted rank per site is recorded, as for every eraser);
* ``random@K`` — K seeded random directions removed in the whitened space (the classic control);
* ``random-raw@K`` — K random directions removed in the raw space;
* ``random-var@K`` — per site, the raw-space random eraser of the smallest rank that removes at least the share of
  raw variance text@K removes there (fit_eraser match_by ``variance``; target and achieved per site in its meta).

Without ``@K``: ``text`` uses the plan's text_classes, ``random`` and ``random-raw`` match the plan's random_match
(a concept's per-site rank, or a rank), ``random-var`` matches ``text``'s variance. `expand_concepts` turns
``--concepts text,random --ranks 4,8`` into text@4, random@4, text@8, random@8 (rank by rank, so each rank's
controls sit beside it in the table); concepts that take no rank (chars, boc, energy, pitch) stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interp.erasure import CONCEPTS
from interp.errors import InterpError

__all__ = ["ConceptSpec", "FAMILIES", "RANKED", "parse_concept", "expand_concepts", "family_of"]

RANDOM_CONTROLS = ("random", "random-raw", "random-var")
FAMILIES = (*(c for c in CONCEPTS if c != "random"), *RANDOM_CONTROLS)
"""What a spec names before its ``@rank``: the concepts of interp.erasure and the three random controls."""
RANKED = ("text", *RANDOM_CONTROLS)
"""The families that take a rank."""


class SpecError(InterpError):
    """A concept spec that cannot be read (the sweep raises it as its SweepError)."""


@dataclass(frozen=True)
class ConceptSpec:
    """One concept of a sweep: name as written in the table (``text@8``), family (``text``), rank (None: none)."""

    name: str
    family: str
    rank: int | None = None

    @property
    def slug(self) -> str:
        """File- and folder-safe name (eraser files, system folders): ``text@8`` → ``text-r8``."""
        return self.family if self.rank is None else f"{self.family}-r{self.rank}"

    def fit_options(self, *, text_classes: int, random_match: str) -> dict[str, Any]:
        """fit_eraser's concept, match, random_space, match_by and text_classes for this spec."""
        classes = self.rank if self.rank is not None and self.family in ("text", "random-var") else text_classes
        options: dict[str, Any] = {"concept": self.family, "match": None, "random_space": "whitened",
                                   "match_by": "rank", "text_classes": classes}
        if self.family in ("random", "random-raw"):
            match: str | int = random_match.strip()
            match = int(match) if str(match).isdigit() else match
            options.update(concept="random", match=self.rank if self.rank is not None else match,
                           random_space="raw" if self.family == "random-raw" else "whitened")
        elif self.family == "random-var":
            options.update(concept="random", match="text", random_space="raw", match_by="variance")
        return options


def family_of(concept: str) -> str:
    """The family of a table row's concept (``random-var@8`` → ``random-var``)."""
    return concept.split("@", 1)[0]


def parse_concept(spec: str) -> ConceptSpec:
    """``text``, ``text@8``, ``random-raw@16``, …; raises SpecError (one line) for anything else."""
    text = spec.strip()
    family, at, rank_text = text.partition("@")
    forms = f"choose among {', '.join(FAMILIES)}; {', '.join(RANKED)} also take a rank, e.g. text@8"
    if family not in FAMILIES:
        raise SpecError(f"unknown concept {family!r} in {text!r}; {forms}")
    if not at:
        return ConceptSpec(family, family)
    if family not in RANKED:
        raise SpecError(f"{text!r}: {family} takes no rank; only {', '.join(RANKED)} do")
    if not rank_text.isdigit() or int(rank_text) < 1:
        raise SpecError(f"{text!r}: the rank after @ must be a whole number ≥ 1, e.g. {family}@8")
    return ConceptSpec(f"{family}@{int(rank_text)}", family, int(rank_text))


def expand_concepts(concepts: list[str], ranks: list[int] | None = None) -> list[ConceptSpec]:
    """The specs of `concepts`, with every unranked rankable family expanded over `ranks` (rank by rank, in one
    block where the first of them stood); duplicates dropped, order kept."""
    parsed = [parse_concept(c) for c in concepts if c.strip()]
    if not parsed:
        raise SpecError(f"no concept given; choose among {', '.join(FAMILIES)}")
    if ranks is not None and (not ranks or any(int(r) < 1 for r in ranks)):
        raise SpecError(f"ranks {list(ranks)!r}: give whole numbers ≥ 1, e.g. 4,8,16,32")
    if not ranks:
        return list(dict.fromkeys(parsed))
    expand = list(dict.fromkeys(s for s in parsed if s.family in RANKED and s.rank is None))
    swept = [ConceptSpec(f"{s.family}@{r}", s.family, r) for r in dict.fromkeys(int(r) for r in ranks)
             for s in expand]
    if not expand:
        raise SpecError(f"ranks {list(ranks)!r} sweep {', '.join(RANKED)} written without a rank; no concept given "
                        "is one of them")
    out: list[ConceptSpec] = []
    for spec in parsed:
        out.extend(swept if spec is expand[0] else [] if spec in expand else [spec])
    return list(dict.fromkeys(out))
