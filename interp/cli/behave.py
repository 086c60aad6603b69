"""`interp behave` (every system answers every set), `interp stats` (how alike the systems answer) and
`interp serve` (a model behind an OpenAI-compatible API)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import (
    DEVICE,
    DEVICE_MAP,
    DTYPE,
    MODEL_HELP,
    SYSTEMS_HELP,
    bar,
    load_system,
)
from interp.errors import InterpError

__all__ = ["behave", "stats_command", "serve_command"]


def behave(
    ctx: typer.Context,
    systems: str = typer.Option(..., help=SYSTEMS_HELP),
    data: list[Path] = typer.Option(..., "--data", metavar="SET", help="Spoken set folders: --data SET [SET ...]."),
    out: Path = typer.Option(..., "--out", metavar="RUN",
                             help="Run folder; predictions go to RUN/<system>/<set>.jsonl."),
    limit: Optional[int] = typer.Option(None, help="Answer only the first N items of each set."),
    prompts: str = typer.Option("chat", "--prompts", metavar="STYLE",
                                help="chat: each task's zero-shot instruction through each model's own chat "
                                     "template; few-shot: the plain few-shot completions (base models, mini stack)."),
    calibrate: str = typer.Option("none", "--calibrate", metavar="none|batch",
                                  help="batch: subtract each choice's mean score over the run's items before the "
                                       "argmax (each answer then depends on the others); rerunning a finished run "
                                       "with another value re-finalises it without running the systems."),
    ablate: Optional[str] = typer.Option(None, "--ablate", metavar="silence|babble|swap",
                                         help="Answer with each item's audio replaced (a control, its own run in "
                                              "RUN/<system>+<ablation>/): silence (zeros), babble (the shipped "
                                              "babble recording alone) or swap (another item's audio, by a "
                                              "seeded derangement). Refused for systems that read text."),
    seed: int = typer.Option(0, help="Seed of the ablation (babble offsets, swap derangement); recorded."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Let every system answer every item of every set (resumable), then print accuracy per system and set.

    Forced choice by the summed log-likelihood of each choice, scored as the continuation the model would write
    (uncalibrated unless --calibrate batch), open answers by greedy generation; an endpoint answers forced
    choices by generation + parsing.
    """
    from interp.behavior import parse_systems, run_summary, set_name, system_folder
    from interp.data.ablation import check_ablation
    from interp.data.manifest import SpokenSet
    from interp.errors import DataError
    from interp.models.checkpoints import LoadOptions
    from interp.study.analyses import answer_sets
    from interp.task_prompts import check_calibration, check_prompt_style, task_prompt

    style, calibration = check_prompt_style(prompts), check_calibration(calibrate)
    ablation = check_ablation(ablate) if ablate is not None else None
    specs = parse_systems(systems)
    folders = list(data)
    for extra in ctx.args:
        if extra.startswith("-"):
            raise DataError(f"unexpected option {extra!r}")
        folders.append(Path(extra))
    sets = [SpokenSet.open(folder) for folder in folders]
    names = [set_name(spoken.root) for spoken in sets]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise DataError(f"two sets are called {duplicate!r} (predictions are named after the set folder); "
                        "rename one folder")
    for spoken in sets:
        for task in dict.fromkeys(item.task for item in spoken.items):
            task_prompt(task, style)
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    options = LoadOptions(device=device, dtype=dtype, device_map=device_map)
    config = {"systems": systems, "data": [str(f) for f in folders], "limit": limit, "device": device,
              "prompts": style, "calibration": calibration, "ablation": ablation, "seed": seed}
    answer_sets(specs, sets, out, load=lambda spec: spec.load(options), config=config, limit=limit, seed=seed,
                prompt_style=style, calibration=calibration, progress=bar, ablation=ablation)
    label = "calibrated (batch)" if calibration == "batch" else "uncalibrated"
    heard = f", audio ablated: {ablation} (seed {seed})" if ablation else ""
    _echo_accuracy(run_summary(out), [system_folder(spec.name, ablation) for spec in specs], names,
                   f"{style} prompts, {label}{heard}")
    typer.echo(f"predictions in {out}; next: interp stats {out}")


def _echo_accuracy(summary: list[dict], system_order: list[str], names: list[str], how: str) -> None:
    """Accuracy per system (its run folder: `<system>+<ablation>` for an ablated one) and set, in the order asked."""
    rows = sorted((row for row in summary if row["system"] in system_order and row["set"] in names),
                  key=lambda row: (system_order.index(row["system"]), names.index(row["set"])))
    typer.echo(f"{'system':24s} {'set':28s} {'items':>6s} {'accuracy':>9s}  ({how})")
    for row in rows:
        extra = f"  WER {row['wer']:.3f}" if row["wer"] is not None else ""
        extra += f"  unparsed {row['unparsed']}" if row["unparsed"] else ""
        extra += f"  [audio ablated: {row['ablation']}]" if row.get("ablation") else ""
        typer.echo(f"{row['system']:24s} {row['set']:28s} {row['items']:6d} {row['accuracy']:9.3f}{extra}")


def stats_command(
    run: Path = typer.Argument(..., metavar="RUN", help="A run folder written by interp behave."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results file (default RUN/stats.json); the figures "
                                       "are written beside it as standalone HTML."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples."),
    level: float = typer.Option(0.95, help="Confidence level of the intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    figures: bool = typer.Option(True, help="Write kappa_heatmap.html, error_overlap.html, accuracy_vs_snr.html."),
) -> None:
    """Accuracy with CIs, kappa matrix, error overlap, McNemar + Benjamini-Hochberg, accuracy vs SNR."""
    from interp.study.analyses import write_statistics

    computed = write_statistics(run, out=out, n_boot=n_boot, level=level, seed=seed, figures=figures)
    stats, out = computed.stats, computed.written[0]
    for skipped in stats["skipped"]:
        typer.echo(f"skipped unfinished {skipped} (rerun interp behave to finish it)", err=True)
    pct = f"{level:.0%}"
    for name, entry in stats["sets"].items():
        kind = "open answers" if entry["open"] else f"K={entry['n_choices']}"
        typer.echo(f"{name} ({entry['task']}, {entry['n_items']} items, {kind})")
        for system, estimate in entry["accuracy"].items():
            wer = entry.get("wer", {}).get(system)
            typer.echo(f"  acc {system:24s} {estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"
                       + (f"  WER {wer:.3f}" if wer is not None else ""))
        kappas = {(k["a"], k["b"]): k for k in entry["kappa"]}
        overlaps = {(o["a"], o["b"]): o for o in entry["error_overlap"]}
        for test in entry["mcnemar"]:
            key = (test["a"], test["b"])
            line = f"  {test['a'] + ' / ' + test['b']:44s}"
            if key in kappas:
                line += f" κ {kappas[key]['value']:.3f} [{kappas[key]['low']:.3f}, {kappas[key]['high']:.3f}]"
            line += f"  McNemar p {test['p_value']:.3g} q {test['q_value']:.3g}"
            if key in overlaps and overlaps[key]["value"] is not None:
                line += f"  overlap {overlaps[key]['value']:.2f} (chance {overlaps[key]['chance']:.2f})"
            typer.echo(line)
    for group, table in stats["snr"].items():
        typer.echo(f"accuracy vs SNR: {group} ({', '.join(table['sets'])})")
        for row in table["rows"]:
            level_name = "clean" if row["snr_db"] is None else f"{row['snr_db']:g} dB"
            typer.echo(f"  {level_name:>8s} {row['system']:24s} {row['accuracy']:.3f} [{row['low']:.3f}, "
                       f"{row['high']:.3f}] n={row['n']}")
    _echo_ablations(stats["ablations"])
    typer.echo(f"wrote {out} ({pct} intervals, {n_boot} resamples, seed {seed})")
    for path in computed.written[1:]:
        typer.echo(f"wrote {path}")


def _echo_ablations(rows: list[dict]) -> None:
    """One line per ablated run: accuracy with its CI, and beside the clean run its accuracy and kappa."""
    for row in rows:
        line = f"ablation {row['folder']:24s} {row['set']:24s} n={row['n']}"
        if row["accuracy"] is not None:
            line += f"  acc {row['accuracy']:.3f} [{row['accuracy_ci'][0]:.3f}, {row['accuracy_ci'][1]:.3f}]"
        if row["clean_accuracy"] is None:
            typer.echo(line + f"  (no clean {row['system']} run to compare)")
            continue
        line += f"  clean acc {row['clean_accuracy']:.3f}"
        if row["kappa_with_clean"] is not None:
            line += f"  κ with clean {row['kappa_with_clean']:.3f} [{row['kappa_ci'][0]:.3f}, {row['kappa_ci'][1]:.3f}]"
        typer.echo(line)


def serve_command(
    model: str = typer.Option(..., help="A speech LLM or a cascade. " + MODEL_HELP),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="Port (0 picks a free one; the line printed at start names it)."),
    name: Optional[str] = typer.Option(None, help="Model name the API reports and expects (default: --model)."),
    api_key_env: Optional[str] = typer.Option(None, help="Require 'Authorization: Bearer <key>' with the key "
                                              "read from this environment variable."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Serve a model behind an OpenAI-compatible API: POST /v1/chat/completions, GET /v1/models."""
    import os

    from interp.serve import make_server

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise InterpError(f"--api-key-env {api_key_env}: the variable is not set")
    system = load_system(model, device, dtype, device_map)
    served = name or (model if ":" not in model else getattr(system, "name", model))
    server = make_server(system, host, port, model_name=served, api_key=key)
    bound_host, bound_port = server.server_address[:2]
    typer.echo(f"serving {served} at http://{bound_host}:{bound_port}/v1 (POST /chat/completions, GET /models); "
               "Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
    finally:
        server.server_close()
