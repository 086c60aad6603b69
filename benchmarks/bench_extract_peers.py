"""Extraction against its peers, in one run: `interp extract`, nnsight and TransformerLens, each ÷ a plain forward.

The same items and the same sites (`--sites`, default `llm.layers.*`, what `interp extract` takes by default) for
every method; rows kept in float16. Two sides, because TransformerLens cannot take audio:

speech (`--model`, default mini-ultravox), rows at the audio positions, `--batch-size` items per pass:
  plain       `system.logits(system.prepare(audio, prompts))`, no hooks: the baseline.
  ours        `activations.extract.extract(...)` writing the sharded HDF5 cache, as `interp extract` does (its
              probe pass for the sites' widths, its hooks, float16 checks, shards and manifest all timed).
  nnsight     `interp.trace`: `traced.values(sites)` saved inside `with traced.trace(audio, prompts)`, then a user's
              own loop writing the audio-position rows with h5py (one resizable float16 dataset per site, appended
              item by item). `trace(system)` is built once, untimed, as a user builds it once.
text (the oracle's SmolLM2 reading each item's transcript in the task prompt, one item per pass, every position):
  plain       the text LLM's own forward (`model(input_ids, attention_mask).logits`, sdpa attention): the baseline.
  ours        activations.hooks.capture on the TextLM's sites, stopping after the last one as extraction does.
  nnsight     `trace(text_lm)`, `traced.values(sites)`.
  transformer-lens  `bridge.run_with_cache(ids, names_filter=[blocks.{i}.hook_resid_post ...])` on
              `to_transformer_lens(text_lm)` (built once, untimed).
  tl-forward  the bridge's forward with no cache and no write: what the bridge itself (eager attention, hook
              points) costs, to tell it from what caching costs.
  The text methods (not tl-forward) all write their rows with the same user h5py loop as nnsight on the speech
  side, so they differ only in how the activations are read. `interp extract` has no text-LLM mode (it takes
  speech LLMs), so `ours` there is the library's hooks, not the CLI.

Every method runs in a fresh subprocess of its own (one model load each), which times the plain forward of the same
model in the same process: a warm-up and `--repeats` plain runs, then the method's one-time set-up (untimed, kept in
the JSON), a warm-up of the method on one item, then `--repeats` rounds of the method and a plain run side by side,
their order alternating. The ratio is the median over rounds of method ÷ the plain run beside it, so a load that
drifts between rounds (another job starting) cancels; the range printed is their min-max. `trace` wraps the model's
modules for good, so in the nnsight processes the paired plain runs go through nnsight's wrappers, inert outside a
trace (a check per module call); the line after the table compares them with the plain runs before the wrap. Only
the text side is one item per pass, so seconds per item compare within a side, not across.

Peak memory, per run: on CPU the peak resident set (VmHWM) above the resident set (VmRSS) at the start of the run,
the peak reset before each run by writing 5 to /proc/self/clear_refs (Linux); the largest over the timed runs.
tracemalloc would miss torch's CPU tensors, and getrusage's ru_maxrss cannot be reset (and a child starts with its
parent's). On CUDA: torch.cuda.max_memory_allocated above memory_allocated, the peak reset before each run.

Ours stops the pass after its last site, as `interp extract` does, so it skips the unembedding (SmolLM2's is a
576 × 49,152 matrix, about a fifth of its weights, and its float32 logits are most of the plain pass's peak memory);
the peers run the whole pass, as a user's trace or run_with_cache does by default, and the plain forward computes the
logits too.

The goal (issue 36): ours ≤ 1.10 × the plain forward, and no slower (ratio to its own plain forward) than the
faster peer. About 6 minutes on the project's 2-core machine at load average 6-7 with `--threads 1` (less on idle
cores); on a shared machine pass `--threads 1` (docs/performance.md). No network, nothing outside the repository:
the set is spoken by espeak, the models come from the installed weight packages.
Usage: python benchmarks/bench_extract_peers.py [--items 8] [--device cpu|cuda] [--threads 1] [--out peers.json]
       [--profile] [--methods speech:ours,text:transformer-lens] [--data SPOKEN_SET]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

SPEECH_METHODS = ("ours", "nnsight")
TEXT_METHODS = ("ours", "nnsight", "transformer-lens", "tl-forward")
LABELS = {
    ("speech", "plain"): "plain forward (system.logits)",
    ("speech", "ours"): "ours: interp extract -> HDF5 cache",
    ("speech", "nnsight"): "nnsight trace + .save, user h5py loop",
    ("text", "plain"): "plain forward (HF model, sdpa)",
    ("text", "ours"): "ours: activations.hooks.capture + h5py",
    ("text", "nnsight"): "nnsight trace + .save, user h5py loop",
    ("text", "transformer-lens"): "TransformerLens run_with_cache + h5py",
    ("text", "tl-forward"): "TransformerLens forward (no cache, no write)",
}


# --- measuring one run ------------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split(f"{field}:")[1].split()[0])


class _Meter:
    """Seconds and peak memory (MB above the start) of one run; see the module's docstring."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.how = ("torch.cuda.max_memory_allocated - memory_allocated, peak reset per run" if self.cuda else
                    "VmHWM - VmRSS at the run's start, peak reset per run via /proc/self/clear_refs")
        if not self.cuda:
            try:
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
            except OSError:  # no reset: the peak is the process's, so a delta only shows what exceeds earlier peaks
                self.how = "ru_maxrss delta (peak could not be reset: a lower bound)"

    def run(self, fn: Callable[[], None]) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            if self.how.startswith("VmHWM"):
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
                base = _status_kb("VmRSS") * 1024
            else:
                import resource

                base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        elif self.how.startswith("VmHWM"):
            peak = _status_kb("VmHWM") * 1024
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return seconds, max(peak - base, 0) / 2**20


# --- what a user writes: rows into h5py, one dataset per site, appended per item ------------------------------------

class _UserH5:
    """One float16 dataset per site, grown item by item, plus each item's id and row offset."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.file = h5py.File(path, "w")
        self.sets: dict = {}
        self.ids: list[str] = []
        self.offsets = [0]

    def add(self, item_id: str, rows: dict[str, torch.Tensor]) -> None:
        for site, tensor in rows.items():
            array = tensor.float().cpu().numpy().astype(np.float16)
            if site not in self.sets:
                self.sets[site] = self.file.create_dataset(site, shape=(0, array.shape[1]), dtype="float16",
                                                           maxshape=(None, array.shape[1]),
                                                           chunks=(256, array.shape[1]))
            data = self.sets[site]
            data.resize(data.shape[0] + len(array), axis=0)
            data[-len(array):] = array
        self.ids.append(item_id)
        self.offsets.append(self.offsets[-1] + len(array))

    def close(self) -> None:
        self.file.create_dataset("offsets", data=np.asarray(self.offsets, dtype=np.int64))
        self.file.create_dataset("ids", data=np.asarray(self.ids, dtype="S"))
        self.file.close()


# --- the two sides ------------------------------------------------------------------------------------------------

class _Speech:
    """mini-ultravox (or --model) on the spoken items, batched; rows at the audio positions."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from interp.data.manifest import SpokenSet
        from interp.models.checkpoints import LoadOptions
        from interp.models.mini import load_model
        from interp.sites import expand_sites
        from interp.task_prompts import task_prompt

        self.args, self.work, self.runs = args, work, 0
        self.model = load_model(args.model, options=LoadOptions(device=args.device))
        self.spoken = SpokenSet.open(args.data)
        self.items = list(self.spoken.items[:args.items])
        self.sites = expand_sites(args.sites, list(self.model.sites()))
        self.prompt_for = lambda item: task_prompt(item.task).for_item(item)

    def _batches(self, items: Sequence) -> Iterator[tuple[list, list, list[str]]]:
        for start in range(0, len(items), self.args.batch_size):
            chunk = list(items[start:start + self.args.batch_size])
            yield chunk, [self.spoken.load_audio(item) for item in chunk], [self.prompt_for(item) for item in chunk]

    def plain(self, items: Sequence) -> None:
        for _, audio, prompts in self._batches(items):
            batch = self.model.prepare(audio, prompts)
            with torch.no_grad():
                self.model.logits(batch)

    def _fresh(self, suffix: str) -> Path:
        self.runs += 1
        return self.work / f"run{self.runs}{suffix}"

    def method(self, name: str) -> Callable[[Sequence], None]:
        if name == "ours":
            from activations.extract import extract, plan_extraction

            plan = plan_extraction(self.model, self.args.sites, "audio")

            def ours(items: Sequence) -> None:
                extract(self.model, self.spoken, self._fresh(""), plan=plan, prompt_for=self.prompt_for,
                        dtype="float16", batch_size=self.args.batch_size, limit=len(items))
            return ours
        if name == "nnsight":
            from interp.trace import trace

            traced = trace(self.model)

            def nnsight(items: Sequence) -> None:
                sink = _UserH5(self._fresh(".h5"))
                for chunk, audio, prompts in self._batches(items):
                    with traced.trace(audio, prompts):
                        acts = traced.values(self.sites)
                    keep = traced.batch.audio_mask & traced.batch.attention_mask.bool()
                    for row, item in enumerate(chunk):
                        mask = keep[row].to(acts[self.sites[0]].device)
                        sink.add(item.id, {site: acts[site][row][mask] for site in self.sites})
                sink.close()
            return nnsight
        raise SystemExit(f"no speech method {name!r}; choose from {', '.join(SPEECH_METHODS)}")


class _Text:
    """The oracle's text LLM (SmolLM2) on each item's transcript in its task prompt, one item per pass."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from interp.data.manifest import SpokenSet
        from interp.models.checkpoints import LoadOptions
        from interp.models.mini import load_model
        from interp.sites import expand_sites
        from interp.task_prompts import task_prompt

        self.args, self.work, self.runs = args, work, 0
        self.device = torch.device(args.device)
        self.llm = load_model("oracle", options=LoadOptions(device=args.device)).llm
        self.items = list(SpokenSet.open(args.data).items[:args.items])
        self.sites = expand_sites(args.sites, list(self.llm.sites()))
        self.prompt_for = lambda item: task_prompt(item.task).for_item(item)

    def _ids(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([self.llm.prompt_ids(item.transcript, self.prompt_for(item))], device=self.device)
        return ids, torch.ones_like(ids)

    def plain(self, items: Sequence) -> None:
        for item in items:
            ids, mask = self._ids(item)
            with torch.no_grad():
                self.llm.model(input_ids=ids, attention_mask=mask).logits.float()

    def _sink(self) -> _UserH5:
        self.runs += 1
        return _UserH5(self.work / f"run{self.runs}.h5")

    def method(self, name: str) -> Callable[[Sequence], None]:
        if name == "ours":
            from activations.hooks import StopForward, capture

            table = self.llm.sites()

            def ours(items: Sequence) -> None:
                sink = self._sink()
                for item in items:
                    ids, mask = self._ids(item)
                    with capture(table, self.sites, stop_after_last=True) as captured, torch.no_grad():
                        try:
                            self.llm.model(input_ids=ids, attention_mask=mask)
                        except StopForward:
                            pass
                    sink.add(item.id, {site: captured[site][0] for site in self.sites})
                sink.close()
            return ours
        if name == "nnsight":
            from interp.trace import trace

            traced = trace(self.llm)

            def nnsight(items: Sequence) -> None:
                sink = self._sink()
                for item in items:
                    with traced.trace(item.transcript, self.prompt_for(item)):
                        acts = traced.values(self.sites)
                    sink.add(item.id, {site: acts[site][0] for site in self.sites})
                sink.close()
            return nnsight
        if name in ("transformer-lens", "tl-forward"):
            from interp.models.transformer_lens_bridge import hook_for_site, to_transformer_lens

            bridge = to_transformer_lens(self.llm)
            hooks = {site: hook_for_site(site) for site in self.sites}

            def lens(items: Sequence) -> None:
                sink = self._sink()
                for item in items:
                    ids, _ = self._ids(item)
                    with torch.no_grad():
                        _, cache = bridge.run_with_cache(ids, names_filter=list(hooks.values()))
                    sink.add(item.id, {site: cache[hook][0] for site, hook in hooks.items()})
                sink.close()

            def forward(items: Sequence) -> None:
                for item in items:
                    ids, _ = self._ids(item)
                    with torch.no_grad():
                        bridge(ids)
            return lens if name == "transformer-lens" else forward
        raise SystemExit(f"no text method {name!r}; choose from {', '.join(TEXT_METHODS)}")


# --- one method in its own process ----------------------------------------------------------------------------------

def _clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _child(args: argparse.Namespace) -> None:
    side, method = args.child.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        runner = (_Speech if side == "speech" else _Text)(args, Path(tmp) / "out")
        meter = _Meter(torch.device(args.device))
        items = runner.items
        print(f"[{side}:{method}] {len(items)} items, {len(runner.sites)} sites", file=sys.stderr, flush=True)
        plain_before, plain_after, timed, plain_mb, method_mb = [], [], [], [], []
        runner.plain(items[:1])  # warm-up
        for _ in range(args.repeats):
            seconds, mb = meter.run(lambda: runner.plain(items))
            plain_before.append(seconds)
            plain_mb.append(mb)
        start = time.perf_counter()
        fn = runner.method(method)
        setup = time.perf_counter() - start
        _clear(runner.work)
        fn(items[:1])  # warm-up
        runner.plain(items[:1])
        for round_ in range(args.repeats):  # adjacent pairs, the order alternating: drift in the load cancels
            for which in (("method", "plain") if round_ % 2 == 0 else ("plain", "method")):
                if which == "method":
                    _clear(runner.work)  # the previous run's output, untimed
                    seconds, mb = meter.run(lambda: fn(items))
                    timed.append(seconds)
                    method_mb.append(mb)
                else:
                    seconds, mb = meter.run(lambda: runner.plain(items))
                    plain_after.append(seconds)
                    plain_mb.append(mb)
        if args.profile and (side, method) == ("speech", "ours"):
            import cProfile
            import pstats

            _clear(runner.work)
            profiler = cProfile.Profile()
            profiler.runcall(fn, items)
            stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
            stats.print_stats(30)
    plain = statistics.median(plain_before + plain_after)
    paired = [m / p for m, p in zip(timed, plain_after)]
    result = {"side": side, "method": method, "items": len(items), "sites": len(runner.sites),
              "setup_s": setup, "method_s": timed, "plain_before_s": plain_before, "plain_after_s": plain_after,
              "method_s_per_item": statistics.median(timed) / len(items), "plain_s_per_item": plain / len(items),
              "ratio": statistics.median(paired), "paired_ratios": paired,
              "method_peak_mb": max(method_mb), "plain_peak_mb": max(plain_mb), "memory": meter.how}
    Path(args.result).write_text(json.dumps(result))


# --- the run ----------------------------------------------------------------------------------------------------

def _spoken_set(folder: Path, n: int) -> Path:
    """A pitch-suite set spoken by espeak (fast to make, no download; the models do not care what is said)."""
    subprocess.run([sys.executable, "-m", "interp", "data", "synth", "pitch", "--n", str(n), "--seed", "0",
                    "--out", str(folder)], check=True, capture_output=True)
    return folder


def _passed(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--sites", args.sites, "--items", str(args.items), "--batch-size",
            str(args.batch_size), "--repeats", str(args.repeats), "--device", args.device,
            *(["--threads", str(args.threads)] if args.threads else []), *(["--profile"] if args.profile else [])]


def _table(results: list[dict]) -> list[dict]:
    rows = []
    for side in ("speech", "text"):
        mine = [r for r in results if r["side"] == side]
        if not mine:
            continue
        plain = statistics.median(r["plain_s_per_item"] for r in mine)
        rows.append({"side": side, "method": "plain", "label": LABELS[(side, "plain")], "s_per_item": plain,
                     "plain_s_per_item": plain, "ratio": 1.0, "ratio_range": [1.0, 1.0],
                     "peak_mb": max(r["plain_peak_mb"] for r in mine)})
        rows += [{"side": side, "method": r["method"], "label": LABELS[(side, r["method"])],
                  "s_per_item": r["method_s_per_item"], "plain_s_per_item": r["plain_s_per_item"],
                  "ratio": r["ratio"], "ratio_range": [min(r["paired_ratios"]), max(r["paired_ratios"])],
                  "peak_mb": r["method_peak_mb"]} for r in mine]
    return rows


def _print(rows: list[dict], results: list[dict], args: argparse.Namespace, load: tuple) -> list[str]:
    lines = [f"{args.items} items, sites {args.sites}, float16 rows, device {args.device}, torch threads "
             f"{args.threads or torch.get_num_threads()}, median of {args.repeats} runs after a warm-up; "
             f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end ({os.cpu_count()} CPUs)",
             f"speech: {args.model}, batches of {args.batch_size}, rows at audio positions; text: the oracle's "
             "SmolLM2 on the transcripts, one item per pass, every position (TransformerLens takes no audio)",
             f"peak memory: {results[0]['memory']}", "",
             f"{'side':<7}{'method':<46}{'s/item':>9}{'plain s/item':>14}{'ratio':>8}{'range':>13}{'peak MB':>9}"]
    for row in rows:
        low, high = row["ratio_range"]
        lines.append(f"{row['side']:<7}{row['label']:<46}{row['s_per_item']:>9.4f}{row['plain_s_per_item']:>14.4f}"
                     f"{row['ratio']:>8.3f}{f'{low:.2f}-{high:.2f}':>13}{row['peak_mb']:>9.0f}")
    lines.append("(s/item: medians; plain s/item: the plain forward in the same process, the plain row's over the "
                 "side's processes; ratio: median over rounds of method / the plain run beside it, range: their "
                 "min-max; peak MB: the largest over the timed runs)")
    for side in ("speech", "text"):
        ours = next((r for r in rows if r["side"] == side and r["method"] == "ours"), None)
        peers = [r for r in rows if r["side"] == side and r["method"] in ("nnsight", "transformer-lens")]
        if ours is None:
            continue
        verdict = f"{side}: ours {ours['ratio']:.3f} x plain ({'<=' if ours['ratio'] <= 1.10 else '>'} 1.10)"
        if peers:
            best = min(peers, key=lambda r: r["ratio"])
            verdict += (f"; faster peer {best['method']} {best['ratio']:.3f}: ours is "
                        f"{'no slower' if ours['ratio'] <= best['ratio'] else 'slower'}")
        lines.append(verdict)
    for r in results:
        if r["method"] == "nnsight":
            before, after = statistics.median(r["plain_before_s"]), statistics.median(r["plain_after_s"])
            lines.append(f"{r['side']}: the plain forward after trace() wrapped the model: {after / before:.3f} x "
                         "before (nnsight's inert wrappers, and drift)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-ultravox", help="the speech LLM (default mini-ultravox)")
    parser.add_argument("--sites", default="llm.layers.*")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="speech items per pass (text: one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data", type=Path, help="a spoken set folder (default: a pitch set spoken by espeak)")
    parser.add_argument("--methods", default="speech:ours,speech:nnsight,text:ours,text:nnsight,"
                        "text:transformer-lens,text:tl-forward", help="side:method pairs, comma-separated")
    parser.add_argument("--out", type=Path, help="also write the table, every run and provenance to this JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra run of speech:ours (stderr)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(args)
        return
    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or _spoken_set(work / "set", args.items)
        for pair in args.methods.split(","):
            result = work / "result.json"
            subprocess.run([sys.executable, __file__, "--child", pair.strip(), "--data", str(data), "--result",
                            str(result), *_passed(args)], check=True)
            results.append(json.loads(result.read_text()))
    rows = _table(results)
    lines = _print(rows, results, args, (load_start, os.getloadavg()[0]))
    print("\n".join(lines))
    if args.out:
        from interp.provenance import provenance

        config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                  if key not in ("child", "result")}
        args.out.write_text(json.dumps({
            "table": rows, "runs": results, "printed": lines,
            "machine": {"cpus": os.cpu_count(), "load_average_start": load_start, "load_average_end":
                        os.getloadavg()[0], "device": args.device},
            "provenance": provenance(command="benchmarks/bench_extract_peers.py", config=config, seed=0)},
            indent=2))


if __name__ == "__main__":
    main()
