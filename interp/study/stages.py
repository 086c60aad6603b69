"""The stages of a study, as the methods of one object that holds the plan, the folder and the models loaded so
far; interp.study.run_study calls them in order and records each one's marker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from activations import ActivationCache
from activations.extract import extract, plan_extraction
from interp.behavior import System, SystemSpec, parse_systems
from interp.compare_text import text_llm_of, write_compare_text
from interp.data.loaders import DEFAULT_SOURCES, import_items
from interp.data.manifest import MANIFEST, SpokenSet
from interp.data.noise import noisy_set_name, write_noisy_sets
from interp.data.spoken import write_spoken_set
from interp.data.tasks import synthesize_suite
from interp.data.text_items import select_stratified
from interp.erasure_sweep import SweepPlan, run_sweep
from interp.errors import InterpError
from interp.models.base import describe_model, other_weights
from interp.models.checkpoints import LoadOptions
from interp.models.implicit_cascade import implicit_cascade_llm
from interp.models.mini import MODEL_CARDS, load_model
from interp.models.text_lm import TextLM
from interp.provenance import provenance
from interp.report import write_study_report
from interp.resources import resource_path
from interp.sites import llm_layers, parse_layers
from interp.study.analyses import (
    ImplicitCascadeRun,
    answer_sets,
    write_lens,
    write_probes,
    write_statistics,
)
from interp.study.markers import stage_times
from interp.study.plan import StudyPlan
from interp.study.progress import Progress
from interp.task_prompts import task_prompt

__all__ = ["StudyStages", "control_folder"]

_log = logging.getLogger(__name__)


def _implicit_llm(model: System, spec: str) -> TextLM | None:
    """The text LLM that reads `model`'s lens text (its implicit cascade): an Ultravox's own LLM, or the LLM a
    disguise lays its transcript out for (`llm`); None, with a warning, for a model with neither."""
    try:
        return implicit_cascade_llm(model)
    except InterpError as error:
        own = getattr(model, "llm", None)
        if isinstance(own, TextLM):
            return own
        _log.warning("no implicit cascade for %s: %s", spec, error)
        return None


def control_folder(out: Path, spec: str) -> Path:
    """Where every instrument's outputs for the control `spec` go: OUT/controls/<its behaviour system name>."""
    return Path(out) / "controls" / parse_systems(spec)[0].name


class StudyStages:
    """The state shared by the stages of one run: the plan, the folder and the models loaded so far."""

    def __init__(self, plan: StudyPlan, out: Path, progress: Progress, command: str) -> None:
        self.plan, self.out, self.progress, self.command = plan, Path(out), progress, command
        self._models: dict[str, System] = {}

    # -- helpers --------------------------------------------------------------------------------------------
    def model(self, spec: str) -> System:
        if spec not in self._models:
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
        return provenance(command=f"{self.command} (stage {stage})", config=self.plan.to_dict(), seed=self.plan.seed)

    def set_path(self, name: str) -> Path:
        return self.out / "sets" / name

    def spoken(self, name: str) -> SpokenSet:
        return SpokenSet.open(self.set_path(name))

    def noisy_paths(self) -> list[Path]:
        return [self.out / "sets" / f"{name}-babble" / noisy_set_name(snr)
                for name in self.plan.noisy_sets for snr in self.plan.snrs]

    def subjects(self) -> list[tuple[str, Path]]:
        """The models every instrument reads, with the folder each one's outputs go to: the speech model's to
        OUT, each control's to OUT/controls/<its system name>."""
        return [(self.plan.speech_model, self.out)] + [
            (spec, control_folder(self.out, spec)) for spec in self.plan.controls]

    def release(self, spec: str) -> None:
        """Let a model go once a stage is done with it; the speech LLM stays loaded for the stages that follow."""
        if spec != self.plan.speech_model:
            self.drop(spec)

    def answer(self, specs: list[SystemSpec], folders: list[Path], *, ablation: str | None = None) -> list[Path]:
        """`specs` answer the sets at `folders` into OUT/behave (answer_sets), under `ablation` if given."""
        plan = self.plan
        config = {"systems": [s.spec for s in specs], "data": [str(f) for f in folders], "limit": None,
                  "device": plan.device, "prompts": plan.prompt_style, "calibration": plan.calibration,
                  "ablation": ablation}
        return answer_sets(specs, [SpokenSet.open(folder) for folder in folders], self.out / "behave",
                           load=lambda spec: spec.load() if spec.is_endpoint else self.model(spec.spec),
                           config=config, seed=plan.seed, prompt_style=plan.prompt_style,
                           calibration=plan.calibration, release=lambda spec: self.release(spec.spec),
                           progress=self.progress, ablation=ablation)

    # -- stages ---------------------------------------------------------------------------------------------
    def sets(self) -> list[Path]:
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
        specs = parse_systems(",".join(self.plan.behaviour_systems()))
        return self.answer(specs, [self.set_path(name) for name in self.plan.set_names()] + self.noisy_paths())

    def ablations(self) -> list[Path]:
        """The speech model, the cascade and the controls answer the analysis sets under each ablation (systems
        that read text, such as the oracle, hear nothing to ablate and are left out). One system at a time, every
        ablation before the next loads."""
        plan = self.plan
        heard = [spec for spec in parse_systems(",".join(dict.fromkeys([plan.speech_model, plan.cascade,
                                                                         *plan.controls])))
                 if getattr(MODEL_CARDS.get(spec.spec), "kind", None) != "text-lm"]
        folders = [self.set_path(name) for name in plan.analysis_sets]
        written = []
        for spec in heard:
            for ablation in plan.ablations:
                written += self.answer([spec], folders, ablation=ablation)
        return written

    def each_subject(self, read: Callable[[str, Path], list[Path]]) -> list[Path]:
        """read(spec, root) for every subject (subjects()), each model let go once it is done; the files written."""
        written = []
        for spec, root in self.subjects():
            written += read(spec, root)
            self.release(spec)
        return written

    def caches(self) -> list[Path]:
        return self.each_subject(self._caches)

    def _caches(self, spec: str, root: Path) -> list[Path]:
        """`spec`'s `llm.layers.*` on every analysis set, and its encoder's on the first, into ROOT/caches."""
        model = self.model(spec)
        jobs = [(name, "llm.layers.*", root / "caches" / name) for name in self.plan.analysis_sets]
        first = self.plan.analysis_sets[0]
        if any(site.startswith("audio.layers.") for site in model.sites()):
            jobs.append((first, "audio.layers.*", root / "caches" / f"{first}-encoder"))
        written = []
        for name, sites, out in jobs:
            spoken = self.spoken(name)
            if (out / "manifest.json").is_file():
                cache = ActivationCache.open(out)
                if other_weights(cache.header.model_info, model, spec):
                    raise InterpError(f"{out} was extracted with other weights of {spec} "
                                      f"({cache.header.model_info.get('weights')}); choose another --out")
                if len(cache.items) == len(spoken):
                    written.append(out)
                    continue
            extraction = plan_extraction(model, sites, "audio")
            config = {"model": spec, "data": str(spoken.root), "sites": list(extraction.sites),
                      "positions": "audio", "dtype": self.plan.cache_dtype}
            with self.progress(f"extracting {name} {sites}", len(spoken)) as update:
                extract(model, spoken, out, plan=extraction, dtype=self.plan.cache_dtype,
                        prompt_for=lambda item: task_prompt(item.task, self.plan.prompt_style).for_item(item),
                        model_info=describe_model(model, spec),
                        provenance=self.provenance("caches") | {"extract": config}, progress=update)
            written.append(out)
        return written

    def probes(self) -> list[Path]:
        first = self.plan.analysis_sets[0]
        written = []
        for _, root in self.subjects():
            caches = [root / "caches" / name for name in (f"{first}-encoder", first)]
            out = root / "probes.json"
            write_probes([ActivationCache.open(path) for path in caches if path.is_dir()], self.spoken(first), out,
                         probes=self.plan.probes, seed=self.plan.seed, provenance=self.provenance("probes"),
                         progress=self.progress)
            written += [out, out.with_suffix(".html")]
        return written

    def lens(self) -> list[Path]:
        return self.each_subject(self._lens)

    def _lens(self, spec: str, root: Path) -> list[Path]:
        """The lens of `spec` on every analysis set into ROOT/lens, and its implicit cascade into the behaviour run
        (a control's as `<control>-implicit-cascade-L<layer>`, beside the speech model's)."""
        model = self.model(spec)
        llm = _implicit_llm(model, spec)
        prefix = "" if spec == self.plan.speech_model else f"{root.name}-"
        written = []
        for name in self.plan.analysis_sets:
            cache = ActivationCache.open(root / "caches" / name)
            layers = llm_layers(cache.sites)
            layer = layers[-1] if self.plan.lens_layer is None else parse_layers(str(self.plan.lens_layer), layers)[0]
            implicit = None if llm is None else ImplicitCascadeRun(
                self.spoken(name), layer, llm, self.out / "behave", label=name, prompt_style=self.plan.prompt_style,
                calibration=self.plan.calibration, name=f"{prefix}implicit-cascade-L{layer}" if prefix else None)
            config = {"cache": str(root / "caches" / name), "model": spec, "layers": layers, "layer": layer,
                      "norm": True}
            written += write_lens(cache, layers, model=model, out=root / "lens" / f"{name}.json", config=config,
                                  implicit=implicit, seed=self.plan.seed, progress=self.progress,
                                  bar_label=f" {name}").written
        return written

    def compare_text(self) -> list[Path]:
        return self.each_subject(self._compare_text)

    def _compare_text(self, spec: str, root: Path) -> list[Path]:
        """Speech vs text inside `spec`'s LLM on the first analysis set (its word-timed items) into
        ROOT/compare_text; nothing, with a warning, for a model without a text LLM of its own to read the
        transcripts."""
        model, name = self.model(spec), self.plan.analysis_sets[0]
        try:
            text_llm_of(model)
        except InterpError as error:
            _log.warning("no speech-vs-text comparison for %s: %s", spec, error)
            return []
        cache = ActivationCache.open(root / "caches" / name)
        config = {"cache": str(cache.path), "data": str(self.set_path(name)), "model": spec, "layers": "all",
                  "prompts": self.plan.prompt_style}
        return write_compare_text(cache, self.spoken(name), model, root / "compare_text",
                                  prompts=self.plan.prompt_style, seed=self.plan.seed,
                                  provenance=self.provenance("compare_text") | {"compare_text": config})

    def erasure(self) -> list[Path]:
        return self.each_subject(self._erasure)

    def _erasure(self, spec: str, root: Path) -> list[Path]:
        """`spec`'s erasure sweep on the analysis sets into ROOT/erasure."""
        sweep = SweepPlan(model=spec, sets=[self.set_path(n) for n in self.plan.analysis_sets],
                          out=root / "erasure", cache_dir=root / "caches", concepts=self.plan.concepts,
                          ranks=list(self.plan.erasure_ranks) or None, layer_sets=[self.plan.erasure_layers],
                          dtype=self.plan.cache_dtype, seed=self.plan.seed, prompt_style=self.plan.prompt_style,
                          command=f"{self.command} (stage erasure)")
        run_sweep(sweep, model=self.model(spec))
        return [root / "erasure" / name for name in ("sweep.json", "sweep.csv", "sweep.html")]

    def stats(self) -> list[Path]:
        return write_statistics(self.out / "behave", seed=self.plan.seed).written

    def report(self) -> list[Path]:
        return [write_study_report(self.out, stage_times(self.out))]
