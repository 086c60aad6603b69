"""What a sweep runs (`SweepPlan`), checked where it enters, and the one error a sweep raises for a user mistake.

Concepts are specs (interp.erasure_sweep.specs): ``text``, ``text@8``, ``random-raw@16``, ``random-var``; with
`ranks`, every rankable concept written without a rank is swept over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from interp.erasure_sweep.specs import ConceptSpec, SpecError, expand_concepts
from interp.errors import InterpError

__all__ = ["SweepError", "SweepPlan", "CONCEPT_ORDER", "RESULT_KEYS"]

CONCEPT_ORDER = ("text", "chars", "boc", "energy", "pitch", "random", "random-raw", "random-var")
"""The order of the concept families in the figure's panels."""

RESULT_KEYS = ("model", "limit", "split", "seed", "positions", "random_match", "text_classes", "dtype")
"""The plan's fields that change the numbers: one run folder holds one value of each."""


class SweepError(InterpError):
    """A user mistake or a conflict with what RUN already holds: one line on stderr, exit status 2."""


@dataclass
class SweepPlan:
    """What a sweep runs. layer_sets are specs ("0-29", "0,4,8", "all"), resolved against the model's layers;
    concepts are concept specs, expanded over `ranks` when given (`specs` holds them parsed, `concepts` their
    names)."""

    model: str
    sets: list[Path]
    out: Path
    concepts: list[str] = field(default_factory=lambda: ["text", "random", "chars", "energy", "pitch"])
    layer_sets: list[str] = field(default_factory=lambda: ["0-29", "0-14", "15-29"])
    ranks: list[int] | None = None
    cache_dir: Path | None = None
    positions: str = "audio"
    limit: int | None = None
    split: str = "half"
    random_match: str = "text"
    text_classes: int = 32
    dtype: str = "float32"
    prompt_style: str = "chat"
    batch_size: int = 8
    seed: int = 0
    threads: int | None = None
    command: str = "interp.erasure_sweep"
    layer_map: dict[str, list[int]] = field(default_factory=dict, init=False)
    specs: list[ConceptSpec] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 2:
            raise SweepError(f"limit {self.limit}: need at least 2 items (one to fit, one to evaluate)")
        try:
            self.specs = expand_concepts(list(self.concepts), self.ranks)
        except SpecError as error:
            raise SweepError(f"concepts: {error}") from None
        self.concepts = [spec.name for spec in self.specs]
        if self.positions not in ("audio", "all"):
            raise SweepError(f"positions {self.positions!r}: choose audio or all")
        if self.split not in ("half", "none"):
            raise SweepError(f"split {self.split!r}: choose half or none")
        self.out = Path(self.out)
        self.sets = [Path(s) for s in self.sets]
        self.cache_dir = Path(self.cache_dir) if self.cache_dir else self.out / "caches"

    def result_config(self) -> dict[str, object]:
        """The fields of RESULT_KEYS, as `sweep_config.json` records them."""
        return {key: getattr(self, key) for key in RESULT_KEYS}
