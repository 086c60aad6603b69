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
    extra_systems: list[str] = field(default_factory=lambda: ["oracle"])
    suites: dict[str, int] = field(default_factory=lambda: {"sentiment": 24, "topic": 24, "pitch": 24, "rate": 24})
    benchmarks: dict[str, int] = field(default_factory=lambda: {"sst2": 80, "ag_news": 80})
    benchmark_files: dict[str, str] = field(default_factory=dict)  # dataset -> file (default: the shipped copy)
    noisy_sets: list[str] = field(default_factory=lambda: ["sentiment"])
    snrs: list[float] = field(default_factory=lambda: [20.0, 10.0, 5.0, 0.0])
    analysis_sets: list[str] = field(default_factory=lambda: ["sentiment", "topic"])
    probes: list[str] = field(default_factory=lambda: ["energy", "pitch", "ctc", "boc"])
    concepts: list[str] = field(default_factory=lambda: ["text", "random", "energy", "pitch"])
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

    def check(self) -> None:
        """Raise InterpError for a plan that names a set it does not build."""
        names = self.set_names()
        for listed, what in ((self.noisy_sets, "noisy set"), (self.analysis_sets, "analysis set")):
            for name in listed:
                if name not in names:
                    raise InterpError(f"{what} {name!r} is not built by this plan (sets: {', '.join(names)})")
        if not self.analysis_sets:
            raise InterpError("the plan needs at least one analysis set (caches, probes, lens, erasure)")


def demo_plan() -> StudyPlan:
    """The miniature study on the mini stack that `make demo` runs, sized for 20 min on 2 CPU cores.

    Behaviour costs ~2.3 s per item for the three systems together here (mini-cascade's Whisper pads every clip
    to 30 s: 1.5 s of it), TTS ~0.35 s: with 40-item suites and 200-item SST-2 and AG News subsets the demo took
    34.7 min (`interp demo --suite-items 40 --benchmark-items 200` runs that size).

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
