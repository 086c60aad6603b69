"""The stages of a study, as the methods of one object that holds the plan, the folder and the models loaded so
far; interp.study.run_study calls them in order and records each one's marker."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from activations import ActivationCache
from activations.extract import extract, plan_extraction
from interp.behavior import System, SystemSpec, parse_systems
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
from interp.models.mini import load_model
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

__all__ = ["StudyStages"]

_log = logging.getLogger(__name__)


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
        plan = self.plan
        specs = parse_systems(",".join([plan.speech_model, plan.cascade, *plan.extra_systems]))
        folders = [self.set_path(name) for name in plan.set_names()] + self.noisy_paths()
        config = {"systems": [s.spec for s in specs], "data": [str(f) for f in folders], "limit": None,
                  "device": plan.device, "prompts": plan.prompt_style, "calibration": plan.calibration}

        def release(spec: SystemSpec) -> None:
            if spec.spec != plan.speech_model:
                self.drop(spec.spec)  # the speech LLM stays loaded for the stages that follow

        return answer_sets(specs, [SpokenSet.open(folder) for folder in folders], self.out / "behave",
                           load=lambda spec: spec.load() if spec.is_endpoint else self.model(spec.spec),
                           config=config, seed=plan.seed, prompt_style=plan.prompt_style,
                           calibration=plan.calibration, release=release, progress=self.progress)

    def caches(self) -> list[Path]:
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
        first = self.plan.analysis_sets[0]
        caches = [self.out / "caches" / name for name in (f"{first}-encoder", first)]
        out = self.out / "probes.json"
        write_probes([ActivationCache.open(path) for path in caches if path.is_dir()], self.spoken(first), out,
                     probes=self.plan.probes, seed=self.plan.seed, provenance=self.provenance("probes"),
                     progress=self.progress)
        return [out, out.with_suffix(".html")]

    def lens(self) -> list[Path]:
        model = self.model(self.plan.speech_model)
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
            implicit = None if llm is None else ImplicitCascadeRun(
                self.spoken(name), layer, llm, self.out / "behave", label=name, prompt_style=self.plan.prompt_style,
                calibration=self.plan.calibration)
            config = {"cache": str(self.out / "caches" / name), "model": self.plan.speech_model,
                      "layers": layers, "layer": layer, "norm": True}
            written += write_lens(cache, layers, model=model, out=self.out / "lens" / f"{name}.json", config=config,
                                  implicit=implicit, seed=self.plan.seed, progress=self.progress,
                                  bar_label=f" {name}").written
        return written

    def erasure(self) -> list[Path]:
        sweep = SweepPlan(model=self.plan.speech_model, sets=[self.set_path(n) for n in self.plan.analysis_sets],
                          out=self.out / "erasure", cache_dir=self.out / "caches", concepts=self.plan.concepts,
                          layer_sets=[self.plan.erasure_layers], dtype=self.plan.cache_dtype, seed=self.plan.seed,
                          prompt_style=self.plan.prompt_style,
                          command=f"{self.command} (stage erasure)")
        run_sweep(sweep, model=self.model(self.plan.speech_model))
        return [self.out / "erasure" / name for name in ("sweep.json", "sweep.csv", "sweep.html")]

    def stats(self) -> list[Path]:
        return write_statistics(self.out / "behave", seed=self.plan.seed).written

    def report(self) -> list[Path]:
        return [write_study_report(self.out, stage_times(self.out))]
