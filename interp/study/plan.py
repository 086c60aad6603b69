"""What a study runs: the StudyPlan record, the demo's plan, and a plan read from a JSON or TOML file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from interp.errors import InterpError

__all__ = ["StudyPlan", "demo_plan", "load_plan"]


@dataclass
class StudyPlan:
    """What a study runs. Model entries are names (`interp models list`) or checkpoint specs (`ultravox:PATH`)."""

    speech_model: str = "mini-ultravox"
    cascade: str = "mini-cascade"
    # Beside the oracle: the positive control, the Cascade-W ceiling of agreement and a mismatched backbone.
    extra_systems: list[str] = field(default_factory=lambda: ["oracle", "mini-disguise", "mini-cascade-weak",
                                                              "mini-cascade-gemma"])
    # Speech models every instrument also reads (caches, probes, lens, erasure), each into controls/<name>/:
    # what a cascade looks like to that instrument. They answer every set too.
    controls: list[str] = field(default_factory=lambda: ["mini-disguise"])
    # Audio ablations (interp.data.ablation) the speech model, the controls and the cascade answer the analysis
    # sets under: what no use of the audio looks like.
    ablations: list[str] = field(default_factory=lambda: ["swap", "silence"])
    suites: dict[str, int] = field(default_factory=lambda: {"sentiment": 24, "topic": 24, "pitch": 24, "rate": 24})
    benchmarks: dict[str, int] = field(default_factory=lambda: {"sst2": 80, "ag_news": 80})
    benchmark_files: dict[str, str] = field(default_factory=dict)  # dataset -> file (default: the shipped copy)
    noisy_sets: list[str] = field(default_factory=lambda: ["sentiment"])
    snrs: list[float] = field(default_factory=lambda: [20.0, 10.0, 5.0, 0.0])
    analysis_sets: list[str] = field(default_factory=lambda: ["sentiment", "topic"])
    probes: list[str] = field(default_factory=lambda: ["energy", "pitch", "ctc", "boc"])
    # text against the three random controls (whitened matched rank, raw matched rank, raw matched variance)
    concepts: list[str] = field(default_factory=lambda: ["text", "random", "random-raw", "random-var", "energy",
                                                         "pitch"])
    erasure_ranks: list[int] = field(default_factory=list)  # empty: no rank sweep (interp erase sweep --ranks)
    erasure_layers: str = "all"
    lens_layer: int | None = None  # default: the last layer
    prompt_style: str = "chat"  # interp.task_prompts: "chat" (each model's template) or "few-shot"
    calibration: str = "none"  # "none" or "batch" (the behaviour stage's forced choices)
    engine: str = "piper"
    cache_dtype: str = "float32"
    device: str = "cpu"
    model_dtype: str = "float32"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "the plan") -> StudyPlan:
        """The plan `data` describes; a key it leaves out keeps the demo's value. InterpError for an unknown key."""
        known = [f.name for f in fields(cls)]
        unknown = [key for key in data if key not in known]
        if unknown:
            raise InterpError(f"{source}: unknown key {unknown[0]!r}; a plan's keys are {', '.join(known)}")
        return cls(**data)

    def set_names(self) -> list[str]:
        """Every clean set the study builds, suites first."""
        return [*self.suites, *self.benchmarks]

    def behaviour_systems(self) -> list[str]:
        """Every system of the behaviour stage, once each: the speech model, the cascade, the controls, the rest."""
        return list(dict.fromkeys([self.speech_model, self.cascade, *self.controls, *self.extra_systems]))

    def check(self) -> None:
        """Raise InterpError for a plan that names a set it does not build, an unknown ablation or concept, a
        control that is the speech model itself, or a rank below 1."""
        from interp.data.ablation import ABLATIONS
        from interp.erasure_sweep.specs import expand_concepts

        names = self.set_names()
        for listed, what in ((self.noisy_sets, "noisy set"), (self.analysis_sets, "analysis set")):
            for name in listed:
                if name not in names:
                    raise InterpError(f"{what} {name!r} is not built by this plan (sets: {', '.join(names)})")
        if not self.analysis_sets:
            raise InterpError("the plan needs at least one analysis set (caches, probes, lens, erasure)")
        for ablation in self.ablations:
            if ablation not in ABLATIONS:
                raise InterpError(f"ablation {ablation!r}: choose among {', '.join(ABLATIONS)}")
        sizes = {**self.suites, **self.benchmarks}
        if "swap" in self.ablations and any(sizes[name] < 2 for name in self.analysis_sets):
            raise InterpError("the swap ablation needs at least 2 items in every analysis set")
        if self.speech_model in self.controls or len(set(self.controls)) < len(self.controls):
            raise InterpError(f"controls {self.controls!r}: each control is another model than the speech model "
                              f"({self.speech_model}), named once")
        if any(not isinstance(rank, int) or rank < 1 for rank in self.erasure_ranks):
            raise InterpError(f"erasure_ranks {self.erasure_ranks!r}: whole numbers >= 1, e.g. [8, 32]")
        expand_concepts(list(self.concepts), list(self.erasure_ranks) or None)  # InterpError for a bad spec


def demo_plan() -> StudyPlan:
    """The miniature study on the mini stack that `make demo` runs (the StudyPlan defaults, few-shot prompts).

    Without controls and ablations (three systems, four concepts) it was sized for 20 min on 2 CPU cores:
    behaviour ~2.3 s per item for the three systems together (mini-cascade's Whisper pads every clip to 30 s: 1.5
    s of it), TTS ~0.35 s; 40-item suites and 200-item SST-2 and AG News subsets took 34.7 min (`interp demo
    --suite-items 40 --benchmark-items 200`). The controls cost more than the rest of the study: measured on 8
    piper items on a loaded 2-core machine, relative to mini-cascade's 5.75 s per item there, mini-disguise
    answers in 1.6× its time (9.0 s), extracts in 10.6 s per item and answers a swap in 13.8 s (its HF Whisper
    transcribes with token timestamps in every forward pass: the caches, the lens's implicit cascade and every
    erased evaluation pay it again), mini-cascade-weak in 0.5-0.8×, mini-cascade-gemma in 0.7-1.0×. At the default
    sizes (352 items per system, 48 per analysis set) that adds, on an idle machine, roughly 16 min for
    mini-disguise's behaviour, 5 for mini-cascade-weak, 7 for mini-cascade-gemma, 9 for the ablations and 12 for
    the control's caches, lens and erasure sweep: about 70 min for the whole demo (erasure_ranks [8, 32] would add ~4
    evaluations of each erased half per rank and model).

    Prompts are the few-shot plain completions: SmolLM2-135M reads them better than its own chat template (the
    README's task table: the oracle's topic accuracy is 0.750 few-shot and 0.275 zero-shot chat, uncalibrated)."""
    return StudyPlan(prompt_style="few-shot")


def load_plan(path: Path) -> StudyPlan:
    """The StudyPlan in a .json or .toml file (its keys are StudyPlan's fields; TOML, having no null, leaves
    `lens_layer` out for the default). InterpError for another suffix, a file that does not parse, or a bad key."""
    path = Path(path)
    if path.suffix not in (".json", ".toml"):
        raise InterpError(f"--plan {path}: expected a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InterpError(f"--plan {path}: no such file") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else _toml(text)
    except ValueError as error:  # tomllib.TOMLDecodeError is a ValueError too
        raise InterpError(f"--plan {path} does not parse: {error}") from None
    if not isinstance(data, dict):
        raise InterpError(f"--plan {path}: expected an object of StudyPlan's fields")
    return StudyPlan.from_dict(data, source=f"--plan {path}")


def _toml(text: str) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        raise InterpError("a TOML plan needs Python 3.11 or later (tomllib); write it as JSON") from None
    return tomllib.loads(text)
