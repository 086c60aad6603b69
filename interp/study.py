"""The whole study as stages that read and write files: what `interp demo` and scripts/reproduce_paper.py run.

Stages, in order (each writes OUT/stages/<stage>.json when it finishes; a rerun skips finished stages):

  sets       spoken sets: the built-in suites by TTS, benchmark subsets (SST-2, AG News, …) by TTS, and babble
             copies of chosen sets at falling SNRs                                     → OUT/sets/<name>
  behaviour  every system (speech LLM, matched cascade, oracle, …) answers every set   → OUT/behave/<system>/<set>.jsonl
  caches     the speech LLM's `llm.layers.*` at audio positions for the analysis sets, and its encoder's
             `audio.layers.*` for the first one (the probes' control)                  → OUT/caches/<set>[-encoder]
  probes     energy, pitch, CTC and bag-of-characters by layer on the first analysis set's caches → OUT/probes.json
  lens       RMSNorm logit lens by layer; the implicit cascade (lens text → the speech LLM's own text LLM)
             answers the analysis sets into the behaviour run                           → OUT/lens/<set>.json
  erasure    LEACE sweep (text / random / acoustic concepts at all layers, fit and evaluation halves)
                                                                                        → OUT/erasure/sweep.json
  stats      κ, error overlap, McNemar + BH, accuracy vs SNR over the behaviour run     → OUT/behave/stats.json
  report     one self-contained HTML page of all of it                                 → OUT/report.html

A study folder belongs to one plan and one set of weights: rerunning with other settings, or after mini-ultravox's
shipped projector changed, is refused (choose another --out), so a finished stage is never mixed with a changed
one. Every stage's marker records its seconds, the plan and the provenance (versions, git commit, seed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from interp.errors import InterpError

__all__ = ["STAGES", "StudyPlan", "StageResult", "run_study", "demo_plan", "stage_times", "speech_kappas"]

STAGES = ("sets", "behaviour", "caches", "probes", "lens", "erasure", "stats", "report")
_log = logging.getLogger(__name__)

# progress(description, total) -> context manager yielding update(n_done_since_last_call)
Progress = Callable[[str, "int | None"], contextlib.AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _silent(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


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
    34.7 min (`interp demo --suite-items 40 --benchmark-items 200` runs that size)."""
    return StudyPlan()


@dataclass
class StageResult:
    stage: str
    seconds: float
    skipped: bool
    outputs: list[str]


class _Study:
    """The state shared by the stages of one run: the plan, the folder and the models loaded so far."""

    def __init__(self, plan: StudyPlan, out: Path, progress: Progress, command: str) -> None:
        self.plan, self.out, self.progress, self.command = plan, Path(out), progress, command
        self._models: dict[str, Any] = {}

    # -- helpers --------------------------------------------------------------------------------------------
    def model(self, spec: str) -> Any:
        if spec not in self._models:
            from interp.models.checkpoints import LoadOptions
            from interp.models.mini import load_model

            started = time.perf_counter()
            # An own-backbone cascade shares the weights of the speech model loaded before it.
            self._models[spec] = load_model(spec, options=LoadOptions(device=self.plan.device,
                                                                       dtype=self.plan.model_dtype),
                                            loaded=self._models)
            _log.info("loaded %s in %.1f s", spec, time.perf_counter() - started)
        return self._models[spec]

    def drop(self, spec: str) -> None:
        self._models.pop(spec, None)

    def provenance(self, stage: str) -> dict[str, Any]:
        from interp.provenance import provenance

        return provenance(command=f"{self.command} (stage {stage})", config=self.plan.to_dict(), seed=self.plan.seed)

    def set_path(self, name: str) -> Path:
        return self.out / "sets" / name

    def spoken(self, name: str) -> Any:
        from interp.data.manifest import SpokenSet

        return SpokenSet.open(self.set_path(name))

    def noisy_paths(self) -> list[Path]:
        from interp.data.noise import noisy_set_name

        return [self.out / "sets" / f"{name}-babble" / noisy_set_name(snr)
                for name in self.plan.noisy_sets for snr in self.plan.snrs]

    # -- stages ---------------------------------------------------------------------------------------------
    def sets(self) -> list[Path]:
        from interp.data.loaders import DEFAULT_SOURCES, import_items
        from interp.data.manifest import MANIFEST
        from interp.data.noise import noisy_set_name, write_noisy_sets
        from interp.data.spoken import write_spoken_set
        from interp.data.tasks import synthesize_suite
        from interp.data.text_items import select_stratified
        from interp.resources import resource_path

        plan = self.plan
        sources: dict[str, list[Any]] = {}
        for task, n in plan.suites.items():
            sources[task] = synthesize_suite(task, n=n, seed=plan.seed)
        for dataset, limit in plan.benchmarks.items():
            path = Path(plan.benchmark_files[dataset]) if dataset in plan.benchmark_files else \
                resource_path(DEFAULT_SOURCES[dataset])
            sources[dataset] = select_stratified(import_items(dataset, path), limit=limit, seed=plan.seed)
        for name, items in sources.items():
            out = self.set_path(name)
            if (out / MANIFEST).is_file():
                held = {item.id for item in self.spoken(name).items}
                if held != {item.id for item in items}:
                    raise InterpError(f"{out} holds another set than this plan's {name} ({len(held)} items); "
                                      "remove it or choose another --out")
                continue
            with self.progress(f"speaking {name}", len(items)) as update:
                for _ in write_spoken_set(items, out, engine=plan.engine, seed=plan.seed, use_recordings=False,
                                          provenance=self.provenance("sets")):
                    update(1)
        for name in plan.noisy_sets:
            folder = self.out / "sets" / f"{name}-babble"
            if all((folder / noisy_set_name(snr) / MANIFEST).is_file() for snr in plan.snrs):
                continue
            spoken = self.spoken(name)
            with self.progress(f"babble {name}", len(spoken) * len(plan.snrs)) as update:
                for _ in write_noisy_sets(spoken, folder, snrs=plan.snrs, babble="recording", noise_file=None,
                                          seed=plan.seed, provenance=self.provenance("sets"), overwrite=True):
                    update(1)
        return [self.set_path(name) for name in sources] + self.noisy_paths()

    def behaviour(self) -> list[Path]:
        from interp.behavior import parse_systems, record_run, run_system, set_name
        from interp.data.manifest import SpokenSet

        plan = self.plan
        specs = parse_systems(",".join([plan.speech_model, plan.cascade, *plan.extra_systems]))
        folders = [self.set_path(name) for name in plan.set_names()] + self.noisy_paths()
        run = self.out / "behave"
        record_run(run, systems=[s.name for s in specs], sets=[set_name(f) for f in folders],
                   config={"systems": [s.spec for s in specs], "data": [str(f) for f in folders], "limit": None,
                           "device": plan.device, "prompts": plan.prompt_style, "calibration": plan.calibration})
        written = []
        for spec in specs:
            system = self.model(spec.spec) if not spec.is_endpoint else spec.load()
            for folder in folders:
                spoken = SpokenSet.open(folder)
                with self.progress(f"{spec.name} / {set_name(folder)}", len(spoken)) as update:
                    done = [0]

                    def step(n_done: int, total: int, done=done, update=update) -> None:
                        update(n_done - done[0])
                        done[0] = n_done

                    written.append(run_system(system, spoken, run, system_name=spec.name, spec=spec.spec,
                                              seed=plan.seed, progress=step, prompt_style=plan.prompt_style,
                                              calibration=plan.calibration))
            if spec.spec != plan.speech_model:
                self.drop(spec.spec)  # the speech LLM stays loaded for the stages that follow
            system = None  # let a cascade go before the next one loads (GPU memory)
        return written

    def caches(self) -> list[Path]:
        from activations import ActivationCache
        from activations.extract import extract, plan_extraction
        from interp.models.base import describe_model, other_weights
        from interp.task_prompts import task_prompt

        model = self.model(self.plan.speech_model)
        jobs = [(name, "llm.layers.*", self.out / "caches" / name) for name in self.plan.analysis_sets]
        first = self.plan.analysis_sets[0]
        if any(site.startswith("audio.layers.") for site in model.sites()):
            jobs.append((first, "audio.layers.*", self.out / "caches" / f"{first}-encoder"))
        written = []
        for name, sites, out in jobs:
            spoken = self.spoken(name)
            if (out / "manifest.json").is_file():
                cache = ActivationCache.open(out)
                if other_weights(cache.header.model_info, model, self.plan.speech_model):
                    raise InterpError(f"{out} was extracted with other weights of {self.plan.speech_model} "
                                      f"({cache.header.model_info.get('weights')}); choose another --out")
                if len(cache.items) == len(spoken):
                    written.append(out)
                    continue
            extraction = plan_extraction(model, sites, "audio")
            config = {"model": self.plan.speech_model, "data": str(spoken.root), "sites": list(extraction.sites),
                      "positions": "audio", "dtype": self.plan.cache_dtype}
            with self.progress(f"extracting {name} {sites}", len(spoken)) as update:
                extract(model, spoken, out, plan=extraction, dtype=self.plan.cache_dtype,
                        prompt_for=lambda item: task_prompt(item.task, self.plan.prompt_style).for_item(item),
                        model_info=describe_model(model, self.plan.speech_model),
                        provenance=self.provenance("caches") | {"extract": config}, progress=update)
            written.append(out)
        return written

    def probes(self) -> list[Path]:
        from activations import ActivationCache
        from probes import probe_figure, run_probes
        from probes.sweep import ProbeReport

        first = self.plan.analysis_sets[0]
        spoken = self.spoken(first)
        caches = [self.out / "caches" / name for name in (f"{first}-encoder", first)]
        reports = []
        for path in (c for c in caches if c.is_dir()):
            cache = ActivationCache.open(path)
            with self.progress(f"probing {path.name}", len(cache.sites)) as update:
                reports.append(run_probes(cache, spoken, probes=self.plan.probes, seed=self.plan.seed,
                                          progress=lambda done, total, site: update(1)))
        out = self.out / "probes.json"
        record = {"reports": [r.to_dict(None) for r in reports], "provenance": self.provenance("probes")}
        out.write_text(json.dumps(record, indent=1, allow_nan=False, default=str), encoding="utf-8")
        figures = [probe_figure(ProbeReport.from_dict(r)) for r in record["reports"]]
        html_path = out.with_suffix(".html")
        html_path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>probes</title></head><body>"
                             + "\n".join(f.to_html(include_plotlyjs=i == 0, full_html=False)
                                         for i, f in enumerate(figures)) + "</body></html>", encoding="utf-8")
        return [out, html_path]

    def lens(self) -> list[Path]:
        from activations import ActivationCache
        from interp.lens import TokenNormalizer, implicit_cascade_llm, lens_report, logit_lens, run_implicit_cascade, score_lens, write_report
        from interp.sites import llm_layers, parse_layers

        model = self.model(self.plan.speech_model)
        normalizer = TokenNormalizer(model.tokenizer)
        try:
            llm = implicit_cascade_llm(model)
        except InterpError as error:
            _log.warning("no implicit cascade for %s: %s", self.plan.speech_model, error)
            llm = None
        written = []
        for name in self.plan.analysis_sets:
            cache = ActivationCache.open(self.out / "caches" / name)
            layers = llm_layers(cache.sites)
            layer = layers[-1] if self.plan.lens_layer is None else parse_layers(str(self.plan.lens_layer), layers)[0]
            rows = int((cache.row_table()["kind"] == 0).sum())
            with self.progress(f"logit lens {name}", rows * len(layers)) as update:
                result = logit_lens(cache, layers, model=model, progress=update)
            scores = score_lens(result, normalizer, seed=self.plan.seed)
            implicit = None
            if llm is not None:
                spoken = self.spoken(name)
                with self.progress(f"implicit cascade {name} L{layer}", len(spoken)) as update:
                    path = run_implicit_cascade(result, spoken, self.out / "behave", layer=layer, llm=llm,
                                                normalizer=normalizer, seed=self.plan.seed,
                                                progress=lambda done, total: update(1),
                                                prompt_style=self.plan.prompt_style,
                                                calibration=self.plan.calibration)
                sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
                implicit = {"set": name, "layer": layer, "run": str(self.out / "behave"), "system": path.parent.name,
                            "predictions": str(path), "llm": getattr(llm, "name", None),
                            "n_items": sidecar["counts"]["items"], "accuracy": sidecar["accuracy"]}
            config = {"cache": str(self.out / "caches" / name), "model": self.plan.speech_model,
                      "layers": layers, "layer": layer, "norm": True}
            report = lens_report(result, scores, normalizer, implicit=implicit, config=config)
            written += write_report(report, self.out / "lens" / f"{name}.json")
        return written

    def erasure(self) -> list[Path]:
        from interp.erasure_sweep import SweepPlan, run_sweep

        sweep = SweepPlan(model=self.plan.speech_model, sets=[self.set_path(n) for n in self.plan.analysis_sets],
                          out=self.out / "erasure", cache_dir=self.out / "caches", concepts=self.plan.concepts,
                          layer_sets=[self.plan.erasure_layers], dtype=self.plan.cache_dtype, seed=self.plan.seed,
                          prompt_style=self.plan.prompt_style,
                          command=f"{self.command} (stage erasure)")
        run_sweep(sweep, model=self.model(self.plan.speech_model))
        return [self.out / "erasure" / name for name in ("sweep.json", "sweep.csv", "sweep.html")]

    def stats(self) -> list[Path]:
        from interp.behavior import run_statistics
        from interp.report import accuracy_vs_snr, error_overlap_bars, kappa_heatmap, write_figure

        run = self.out / "behave"
        stats = run_statistics(run, seed=self.plan.seed)
        out = run / "stats.json"
        out.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        return [out] + [write_figure(figure, run / filename) for figure, filename in (
            (kappa_heatmap(stats), "kappa_heatmap.html"), (error_overlap_bars(stats), "error_overlap.html"),
            (accuracy_vs_snr(stats), "accuracy_vs_snr.html"))]

    def report(self) -> list[Path]:
        from interp.report import write_study_report

        return [write_study_report(self.out, stage_times(self.out))]


def _marker(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def stage_times(out: Path) -> dict[str, float]:
    """Seconds each finished stage of the study in `out` took (from its marker), in stage order."""
    times = {}
    for stage in STAGES:
        path = _marker(Path(out), stage)
        if path.is_file():
            times[stage] = float(json.loads(path.read_text(encoding="utf-8"))["seconds"])
    return times


def speech_kappas(out: Path, plan: StudyPlan, *, systems: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """κ of the plan's speech model with each of `systems`, by forced-choice set, from OUT/behave/stats.json
    (the stats stage): what scripts/reproduce_paper.py prints for the paper's cascade beside the own-backbone
    one. None for a system that did not answer that set."""
    from interp.behavior import parse_systems

    speech = parse_systems(plan.speech_model)[0].name
    stats = json.loads((Path(out) / "behave" / "stats.json").read_text(encoding="utf-8"))
    table = {}
    for name, entry in stats["sets"].items():
        pairs = {frozenset((pair["a"], pair["b"])): pair["value"] for pair in entry["kappa"]}
        if pairs:
            table[name] = {system: pairs.get(frozenset((speech, system))) for system in systems}
    return table


def _plan_record(plan: StudyPlan) -> dict[str, Any]:
    """plan.json: the plan and the fingerprint of the weights a model name alone does not pin down (a retrained
    mini-ultravox projector), so that finished stages are not reused with other weights."""
    from interp.models.mini import weights_of

    systems = [plan.speech_model, plan.cascade, *plan.extra_systems]
    return plan.to_dict() | {"weights": {spec: w for spec in systems if (w := weights_of(spec)) is not None}}


def _check_plan(out: Path, plan: StudyPlan) -> None:
    path = out / "plan.json"
    record = _plan_record(plan)
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key, value in record.items() if previous.get(key) != value]
        if changed:
            key = changed[0]
            raise InterpError(f"{out} holds a study made with {key} {previous.get(key)!r}, not "
                              f"{record[key]!r}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def run_study(plan: StudyPlan, out: Path, *, stages: list[str] | None = None, progress: Progress | None = None,
              command: str = "interp demo", on_stage: Callable[[StageResult], None] | None = None
              ) -> list[StageResult]:
    """Run `stages` (default: all, in order) of `plan` into `out`, skipping the finished ones."""
    plan.check()
    chosen = list(stages or STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise InterpError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    out = Path(out)
    _check_plan(out, plan)
    study = _Study(plan, out, progress or _silent, command)
    results = []
    for stage in (s for s in STAGES if s in chosen):
        marker = _marker(out, stage)
        if marker.is_file() and stage != "report":
            record = json.loads(marker.read_text(encoding="utf-8"))
            result = StageResult(stage, float(record["seconds"]), True, list(record["outputs"]))
        else:
            started = time.perf_counter()
            outputs = [str(p) for p in getattr(study, stage)()]
            result = StageResult(stage, time.perf_counter() - started, False, outputs)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"stage": stage, "seconds": result.seconds, "outputs": outputs,
                                          "provenance": study.provenance(stage)}, indent=1) + "\n",
                              encoding="utf-8")
        _log.info("stage %s %s in %.1f s", stage, "reused" if result.skipped else "done", result.seconds)
        if on_stage is not None:
            on_stage(result)
        results.append(result)
    return results
