"""Reproduce the cascade-equivalence study (arXiv 2602.17598) on real checkpoints kept in local folders.

One study per end-to-end model given, each the same staged pipeline as `interp demo` (interp.study.run_study),
written to OUT/<model>/ (OUT/<model>/report.html; OUT/<model>/stages/<stage>.json marks a finished stage, and a
rerun with the same arguments resumes). Nothing is downloaded: every model is a local folder as
save_pretrained writes it (config.json + safetensors). A model not given is skipped.

Systems of each study:
  the end-to-end model       --qwen2-audio | --ultravox (+ --ultravox-audio, --ultravox-llm) | --phi4mm
  matched-cascade            --whisper (Whisper-large) → the model's own LLM: --llm-qwen2 (Qwen2-7B-Instruct)
                             for Qwen2-Audio, --llm-llama (Llama-3.1-8B-Instruct) for Ultravox, --llm-phi4-mini
                             (Phi-4-mini-instruct) for Phi-4-MM
  own-backbone-cascade       --whisper → the model's own language model reading the transcript (llm=self):
                             Qwen2-Audio's fine-tuned Qwen2, Ultravox's Llama, Phi-4-MM's Phi-4 without its speech
                             LoRA; it shares the loaded model's weights (no folder, no memory of its own)
  cascade-s                  --whisper → --llm-strong (Qwen2.5-7B-Instruct), when --llm-strong is given
  cascade-w                  --whisper-weak (Whisper-small) → --llm-strong, when both are given
No oracle: the demo's oracle is SmolLM2 reading the gold transcript, and a checkpoint folder of a bare text LLM
has no spec kind here; the cascades' ASR transcripts are in their predictions files instead. Gemini (an API)
is not part of this script.

Stages (each model): sets (SST-2, AG News and CommonsenseQA spoken by TTS, babble copies at 20/10/5/0 dB or --snrs),
behaviour (every system answers every set), caches (the model's LLM layers at audio positions on the analysis
sets, its encoder layers on the first), probes (energy, pitch, CTC, bag of characters by layer), lens (RMSNorm
logit lens; the implicit cascade for Ultravox only), erasure (LEACE: text, random, energy, pitch at all layers),
stats (κ, error overlap, McNemar + BH, accuracy vs SNR), report. At the end, each model's κ with the matched
cascade and with the own-backbone cascade is printed per forced-choice set.

What to expect per model at --items 1000 in bfloat16 on one 80 GB GPU. Disk: the releases' safetensors. GPU:
weights, plus a few GB of activations. Cache disk: rows × layers × width × 2 bytes (bfloat16), audio positions
coming at ~25/s (Qwen2-Audio), ~6/s (Ultravox), ~12/s (Phi-4-MM), plus the encoder's layers on the first analysis
set; it scales with --items. Times are estimates, not measurements (no 7-8B checkpoint could be run where this
script was written); the TTS of the sets (piper) runs on the CPU, ~20-40 min of each study.

  Qwen2-Audio  disk   Qwen2-Audio-7B-Instruct ~17 GB, Qwen2-7B-Instruct ~15 GB
               GPU    ~17 GB for the model, ~19 GB for each cascade loaded beside it
               caches ~170 GB                                time ~6-10 h
  Ultravox     disk   ultravox-v0_6-llama-3_1-8b ~1-3 GB, whisper-large-v3-turbo ~1.6 GB, Llama-3.1-8B-Instruct ~16 GB
               GPU    ~17 GB for the model, ~19 GB for each cascade loaded beside it
               caches ~60 GB                                 time ~5-8 h
  Phi-4-MM     disk   Phi-4-multimodal-instruct (native transformers format) ~11 GB, Phi-4-mini-instruct ~7.7 GB
               GPU    ~11 GB for the model, ~11 GB for its matched cascade, ~19 GB for Cascade-S/W
               caches ~60 GB                                 time ~4-7 h
  every model  disk   whisper-large-v3 ~3.1 GB, whisper-small ~1 GB, Qwen2.5-7B-Instruct ~15 GB

The speech model stays loaded while the cascades answer, one at a time: plan for the speech model plus one
cascade at the peak (~36 GB for the 7-8B models). The
cascades (Cascade-S/W included) answer again in each model's study, since the study folders are independent.

--dry-run rehearses all of it in minutes on the CPU: tiny random checkpoints written as the real releases are
(interp.models.tiny_releases.save_tiny_checkpoints, in a temporary folder) go through the same argument handling, specs
and stages, with a few items per set and espeak instead of piper.

Usage:
    python scripts/reproduce_paper.py --out results/paper --whisper W-LARGE --whisper-weak W-SMALL \\
        --llm-strong QWEN2.5-7B --qwen2-audio QWEN2-AUDIO --llm-qwen2 QWEN2-7B \\
        --ultravox ULTRAVOX --ultravox-audio W-LARGE-V3-TURBO --ultravox-llm LLAMA-3.1-8B --llm-llama LLAMA-3.1-8B \\
        --phi4mm PHI4MM --llm-phi4-mini PHI4-MINI [--items 1000] [--data-dir DIR] [--stages all]
    python scripts/reproduce_paper.py --dry-run --out results/paper-dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from interp.study import StageResult, StudyPlan

SCRIPT = "scripts/reproduce_paper.py"
BENCHMARKS = ("sst2", "ag_news", "csqa")
CONCEPTS = ["text", "random", "energy", "pitch"]
MATCHED, OWN_BACKBONE = "matched-cascade", "own-backbone-cascade"
"""The two cascades whose κ with the end-to-end model is printed: the paper's (public LLM) and the model's own LLM."""
DRY_RUN_ITEMS = 8
"""Items per set in --dry-run: enough for the probes' and the erasure's fit/evaluation halves."""


@dataclass(frozen=True)
class EndToEnd:
    """An end-to-end model of the paper: its folder in OUT, the option of its checkpoint and of its own LLM."""

    name: str
    option: str
    llm_option: str

    def spec(self, args: argparse.Namespace) -> str:
        if self.name == "ultravox":
            bases = [f",{key}={_folder(path)}" for key, path in (("audio", args.ultravox_audio),
                                                                 ("llm", args.ultravox_llm)) if path]
            return f"ultravox:{_folder(args.ultravox)}{''.join(bases)}"
        return f"{self.name}:{_folder(getattr(args, self.option))}"


MODELS = (EndToEnd("qwen2-audio", "qwen2_audio", "llm_qwen2"), EndToEnd("ultravox", "ultravox", "llm_llama"),
          EndToEnd("phi4mm", "phi4mm", "llm_phi4_mini"))


def _folder(path: str | Path) -> Path:
    """Absolute, so the specs recorded in plan.json still name the folders from another working directory."""
    return Path(path).expanduser().resolve()


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_argument_group("end-to-end models (checkpoint folders)")
    models.add_argument("--qwen2-audio", metavar="PATH", help="Qwen2-Audio-7B-Instruct")
    models.add_argument("--ultravox", metavar="PATH", help="fixie-ai Ultravox v0.6 (Llama-3.1-8B)")
    models.add_argument("--ultravox-audio", metavar="PATH",
                        help="Ultravox's Whisper base (whisper-large-v3-turbo), for a checkpoint that stores only "
                             "the projector")
    models.add_argument("--ultravox-llm", metavar="PATH", help="Ultravox's LLM base (Llama-3.1-8B-Instruct)")
    models.add_argument("--phi4mm", metavar="PATH", help="Phi-4-multimodal-instruct, native transformers format")
    cascades = parser.add_argument_group("cascades (checkpoint folders)")
    cascades.add_argument("--whisper", metavar="PATH", help="Whisper-large: the ASR of every cascade but Cascade-W")
    cascades.add_argument("--whisper-weak", metavar="PATH", help="Whisper-small: the ASR of Cascade-W")
    cascades.add_argument("--llm-qwen2", metavar="PATH", help="Qwen2-7B-Instruct (Qwen2-Audio's matched cascade)")
    cascades.add_argument("--llm-llama", metavar="PATH", help="Llama-3.1-8B-Instruct (Ultravox's matched cascade)")
    cascades.add_argument("--llm-phi4-mini", metavar="PATH", help="Phi-4-mini-instruct (Phi-4-MM's matched cascade)")
    cascades.add_argument("--llm-strong", metavar="PATH", help="Qwen2.5-7B-Instruct (Cascade-S and Cascade-W)")
    run = parser.add_argument_group("run")
    run.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="benchmark files: sst2/dev.tsv, ag_news/test.csv, commonsenseqa/dev_rand_split.jsonl "
                          "(default: the copies shipped in interp/resources)")
    run.add_argument("--items", default=None, metavar="N",
                     help=f"items per benchmark, or all (default 1000; {DRY_RUN_ITEMS} with --dry-run)")
    run.add_argument("--snrs", default="20,10,5,0", help="babble SNRs in dB, comma-separated (default 20,10,5,0)")
    run.add_argument("--analysis-sets", default="sst2,ag_news",
                     help="sets whose caches are probed, lensed and erased; the first also gets the encoder's "
                          "layers (default sst2,ag_news)")
    run.add_argument("--out", type=Path, default=Path("results/paper"), help="one folder per model inside")
    run.add_argument("--device", default=None, help="torch device (default cuda; cpu with --dry-run)")
    run.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                     help="model weights (default bfloat16; float32 with --dry-run)")
    run.add_argument("--cache-dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                     help="stored activations (default bfloat16: as the model computes them, never overflows)")
    run.add_argument("--stages", default="all", help="comma-separated stages (default all): sets, behaviour, "
                                                     "caches, probes, lens, erasure, stats, report")
    run.add_argument("--seed", type=int, default=0, help="sets, voices, noise, splits, bootstraps")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    run.add_argument("--dry-run", action="store_true",
                     help="rehearse every stage on tiny random checkpoints (CPU, minutes); takes no model folders "
                          "and a fresh --out each time (its checkpoints live in a new temporary folder)")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.dtype = args.dtype or ("float32" if args.dry_run else "bfloat16")
    if args.items is None:
        args.items = DRY_RUN_ITEMS if args.dry_run else 1000
    elif args.items == "all":
        args.items = None  # select_stratified's "no limit"
    elif args.items.isdigit() and int(args.items) > 0:
        args.items = int(args.items)
    else:
        parser.error(f"--items: expected a positive number or 'all', got {args.items!r}")
    try:
        args.snrs = [float(snr) for snr in args.snrs.split(",")]
    except ValueError:
        parser.error(f"--snrs: expected comma-separated numbers, got {args.snrs!r}")
    return args


_FOLDER_OPTIONS = ("qwen2_audio", "ultravox", "ultravox_audio", "ultravox_llm", "phi4mm", "whisper", "whisper_weak",
                   "llm_qwen2", "llm_llama", "llm_phi4_mini", "llm_strong")


def _use_tiny_checkpoints(args: argparse.Namespace, root: Path) -> None:
    """Point every folder option at a tiny checkpoint (one tiny Llama stands in for every text LLM)."""
    from interp.errors import InterpError
    from interp.models.tiny_releases import save_tiny_checkpoints

    given = [_option(dest) for dest in _FOLDER_OPTIONS if getattr(args, dest)]
    if given:
        raise InterpError(f"--dry-run uses its own tiny checkpoints; drop {', '.join(given)}")
    tiny = save_tiny_checkpoints(root, seed=args.seed)
    for dest in ("qwen2_audio", "ultravox", "phi4mm", "whisper"):
        setattr(args, dest, tiny[dest.replace("_", "-")])
    args.ultravox_audio, args.whisper_weak = tiny["ultravox-audio"], tiny["whisper-weak"]
    for dest in ("ultravox_llm", "llm_qwen2", "llm_llama", "llm_phi4_mini", "llm_strong"):
        setattr(args, dest, tiny["llama"])


def _plans(args: argparse.Namespace) -> dict[str, StudyPlan]:
    """One StudyPlan per end-to-end model given, by model name; InterpError for arguments that cannot make one."""
    from interp.data.loaders import DEFAULT_SOURCES
    from interp.errors import InterpError
    from interp.study import StudyPlan

    if (args.ultravox_audio or args.ultravox_llm) and not args.ultravox:
        raise InterpError("--ultravox-audio and --ultravox-llm are the base models of --ultravox, which is not given")
    given = [model for model in MODELS if getattr(args, model.option)]
    if not given:
        raise InterpError("no model given: pass at least one of --qwen2-audio, --ultravox, --phi4mm "
                          "(with --whisper and its matched LLM), or --dry-run")
    if not args.whisper:
        raise InterpError("--whisper (Whisper-large) is needed: it is the ASR of every matched cascade")
    for dest in _FOLDER_OPTIONS:  # a mistyped folder fails now, not after hours of TTS
        path = getattr(args, dest)
        if path and not (_folder(path) / "config.json").is_file():
            raise InterpError(f"{_option(dest)} {path}: no config.json there; expected a checkpoint folder as "
                              "save_pretrained writes it")
    files = {}
    if args.data_dir is not None:
        for dataset in BENCHMARKS:
            path = args.data_dir / DEFAULT_SOURCES[dataset]
            if not path.is_file():
                raise InterpError(f"--data-dir {args.data_dir}: {path} not found (expected {DEFAULT_SOURCES[dataset]})")
            files[dataset] = str(path.resolve())
    whisper = _folder(args.whisper)
    extra = []
    if args.llm_strong:
        extra.append(f"cascade:asr={whisper},llm={_folder(args.llm_strong)},name=cascade-s")
        if args.whisper_weak:
            extra.append(f"cascade:asr={_folder(args.whisper_weak)},llm={_folder(args.llm_strong)},name=cascade-w")
    plans = {}
    for model in given:
        llm = getattr(args, model.llm_option)
        if not llm:
            raise InterpError(f"{_option(model.option)} needs its matched LLM: {_option(model.llm_option)} PATH")
        speech = model.spec(args)
        own = f"cascade:asr={whisper},llm=self,speech={speech},name={OWN_BACKBONE}"
        plans[model.name] = StudyPlan(
            speech_model=speech, cascade=f"cascade:asr={whisper},llm={_folder(llm)},name={MATCHED}",
            extra_systems=[own, *extra], suites={}, benchmarks=dict.fromkeys(BENCHMARKS, args.items),
            # the positive control: the matched cascade's Whisper and LLM as a speech LLM, a cascade by construction
            controls=[f"disguise:asr={whisper},llm={_folder(llm)}"], ablations=["swap", "silence"],
            benchmark_files=dict(files), noisy_sets=list(BENCHMARKS), snrs=args.snrs,
            analysis_sets=[name.strip() for name in args.analysis_sets.split(",") if name.strip()],
            concepts=list(CONCEPTS), engine="espeak" if args.dry_run else "piper", cache_dtype=args.cache_dtype,
            device=args.device, model_dtype=args.dtype, seed=args.seed)
    return plans


@contextlib.contextmanager
def _bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="item", disable=None, file=sys.stderr, leave=False) as shown:
        yield shown.update


def _release_memory(device: str) -> None:
    """Hand the previous model's GPU memory back before the next study loads its own."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _run(args: argparse.Namespace, command: str) -> dict[str, list[StageResult]]:
    """Every plan's study, in model order; the stage results by model. Prints each model's κ table once its
    stats stage is done."""
    from interp.study import run_study

    plans = _plans(args)
    from interp.models.checkpoints import LoadOptions  # imports transformers: only once the arguments are good

    LoadOptions(device=args.device, dtype=args.dtype).torch_device()  # no GPU: say so before hours of TTS
    for model in MODELS:
        if model.name not in plans:
            print(f"{model.name}: skipped (no {_option(model.option)})", flush=True)
    if not args.llm_strong:
        print("cascade-s, cascade-w: skipped (no --llm-strong)", flush=True)
    elif not args.whisper_weak:
        print("cascade-w: skipped (no --whisper-weak)", flush=True)
    stages = None if args.stages.strip() in ("", "all") else [s.strip() for s in args.stages.split(",") if s.strip()]
    results = {}
    for name, plan in plans.items():
        print(f"{name}: {plan.speech_model} → {args.out / name}", flush=True)

        def finished(result, name=name) -> None:
            how = "reused" if result.skipped else "done"
            print(f"{name:12s} {result.stage:10s} {how:6s} {result.seconds:8.1f} s", flush=True)

        results[name] = run_study(plan, args.out / name, stages=stages, progress=_bar, command=command,
                                  on_stage=finished)
        if (args.out / name / "behave" / "stats.json").is_file():
            print(_kappa_table(name, plan, args.out / name), flush=True)
        _release_memory(args.device)
    return results


def _kappa_table(name: str, plan: StudyPlan, out: Path) -> str:
    """κ of the model with the matched and the own-backbone cascade, one row per forced-choice set."""
    from interp.study import speech_kappas

    kappas = speech_kappas(out, plan, systems=[MATCHED, OWN_BACKBONE])
    lines = [f"{name}: κ with {MATCHED} (public LLM) and {OWN_BACKBONE} (own LLM)",
             f"  {'set':24s}{MATCHED:>22s}{OWN_BACKBONE:>22s}"]
    for set_name, by_system in kappas.items():
        lines.append(f"  {set_name:24s}" + "".join(f"{'-':>22s}" if kappa is None else f"{kappa:22.3f}"
                                                  for kappa in by_system.values()))
    return "\n".join(lines)


def _table(results: dict[str, list[StageResult]]) -> str:
    """Seconds per stage (rows) and model (columns), with totals."""
    from interp.study import STAGES

    seconds = {name: {r.stage: r.seconds for r in stage_results} for name, stage_results in results.items()}
    stages = [stage for stage in STAGES if any(stage in by_stage for by_stage in seconds.values())]
    lines = [f"{'stage':10s}" + "".join(f"{name:>14s}" for name in seconds)]
    for stage in stages:
        lines.append(f"{stage:10s}" + "".join(f"{by_stage[stage]:14.1f}" if stage in by_stage else f"{'-':>14s}"
                                            for by_stage in seconds.values()))
    lines.append(f"{'total':10s}" + "".join(f"{sum(by_stage.values()):14.1f}" for by_stage in seconds.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from interp.errors import InterpError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    package = logging.getLogger("interp")
    package.addHandler(handler)
    verbose = [logging.getLogger(name) for name in ("interp.study", "interp.erasure_sweep")]
    levels = [logger.level for logger in verbose]
    for logger in verbose:
        logger.setLevel(logging.INFO)
    command = " ".join([SCRIPT, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="reproduce-paper-") if args.dry_run else \
                contextlib.nullcontext() as scratch:
            if scratch is not None:
                _use_tiny_checkpoints(args, Path(scratch))
            results = _run(args, command)
    except InterpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        package.removeHandler(handler)
        for logger, level in zip(verbose, levels):
            logger.setLevel(level)
    print(_table(results))
    print(f"{len(results)} model(s) in {time.perf_counter() - started:.1f} s")
    for name in results:
        report = args.out / name / "report.html"
        if report.is_file():
            print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
