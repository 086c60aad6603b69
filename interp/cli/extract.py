"""`interp extract` (activations of a model at its sites, to a sharded cache) and `interp cache` (inspect, verify,
merge the shards of several workers, export)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from interp.cli.options import (
    DEVICE,
    DEVICE_MAP,
    MODEL_HELP,
    PROMPTS,
    load_system,
    progress,
)
from interp.errors import InterpError

__all__ = ["extract_command", "cache_app"]

cache_app = typer.Typer(help="Activation caches: inspect, verify, merge shards of several workers, export.",
                        no_args_is_help=True, rich_markup_mode=None)


def _shard(shard: str | None) -> tuple[int, int]:
    """(rank, world) from `--shard k/N`, else from torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if shard is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        rank, world = (int(part) for part in shard.split("/"))
    except ValueError:
        raise InterpError(f"--shard {shard!r}: expected k/N, e.g. 0/4") from None
    if not 0 <= rank < world:
        raise InterpError(f"--shard {shard}: k must be in 0..N-1")
    return rank, world


def extract_command(
    model: str = typer.Option(..., help="An end-to-end speech LLM. " + MODEL_HELP),
    data: Path = typer.Option(..., help="A spoken set folder."),
    out: Path = typer.Option(..., help="The cache folder (created; an unfinished one is resumed)."),
    sites: str = typer.Option("llm.layers.*", help="Sites: llm.layers.0,4,8 | llm.layers.* | projector,llm.layers.* | "
                              "audio.layers.* (encoder sites go in a cache of their own)."),
    positions: str = typer.Option("audio", help="Rows to keep: audio, text or all positions of the LLM sequence."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored precision: float16 (overflow stops with the site "
                              "named), bfloat16 or float32."),
    batch_size: int = typer.Option(8, help="Items per forward pass (right-padded; rows do not depend on it)."),
    shard: Optional[str] = typer.Option(None, help="k/N: this worker takes items k, k+N, ... (SLURM arrays); "
                                        "under torchrun RANK/WORLD_SIZE are used. Then run `interp cache finalize`."),
    limit: Optional[int] = typer.Option(None, help="Only the first N items of the set."),
    prompt: Optional[str] = typer.Option(None, help="Prompt with <|audio|> for every item (default: each item's "
                                         "task prompt, as the behaviour harness asks it)."),
    prompts: str = PROMPTS,
    items_per_shard: int = typer.Option(64, help="Items per shard file (a crash loses at most one shard)."),
    overwrite: bool = typer.Option(False, help="Replace a cache made with another model, sites or settings."),
    device: str = DEVICE,
    model_dtype: str = typer.Option("float32", "--model-dtype", help="Weights' precision for checkpoints."),
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Cache activations of a speech LLM at its named sites to sharded HDF5 (resumable)."""
    from activations.extract import extract, plan_extraction
    from activations.format import DTYPES, POSITIONS
    from interp.data.manifest import SpokenSet
    from interp.models.base import describe_model
    from interp.provenance import provenance
    from interp.task_prompts import check_prompt_style, task_prompt

    style = check_prompt_style(prompts)
    if dtype not in DTYPES:
        raise InterpError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if positions not in POSITIONS:
        raise InterpError(f"--positions {positions!r}: choose one of {', '.join(POSITIONS)}")
    rank, world = _shard(shard)
    device = _rank_device(device, world=world, torchrun=shard is None)
    spoken = SpokenSet.open(data)
    system = load_system(model, device, model_dtype, device_map)
    plan = plan_extraction(system, sites, positions)
    prompt_for = (lambda item: prompt) if prompt else (lambda item: task_prompt(item.task, style).for_item(item))
    if prompt is not None:
        from interp.models.prompting import split_prompt

        split_prompt(prompt)
    config = {"model": model, "data": str(data), "sites": list(plan.sites), "positions": positions, "dtype": dtype,
              "batch_size": batch_size, "limit": limit, "prompt": prompt, "prompts": None if prompt else style,
              "rank": rank, "world": world}
    total = len([i for i in range(len(spoken.items[:limit])) if i % world == rank])
    with progress(None, total=total, desc=f"extracting {model}") as bar:
        writer = extract(system, spoken, out, plan=plan, prompt_for=prompt_for, dtype=dtype, batch_size=batch_size,
                         rank=rank, world=world, limit=limit, overwrite=overwrite,
                         model_info=describe_model(system, model),
                         provenance=provenance(command="interp extract", config=config, seed=None),
                         items_per_shard=items_per_shard, progress=bar.update)
    typer.echo(f"cache: {out} ({len(writer.done)} items of rank {rank}/{world}, sites {len(plan.sites)}, {dtype})")
    if world > 1:
        typer.echo(f"when every rank has finished: interp cache finalize {out}")


def _rank_device(device: str, *, world: int, torchrun: bool) -> str:
    """Under torchrun each rank takes the GPU its LOCAL_RANK names; otherwise the device as given."""
    if device.startswith("cuda") and world > 1 and torchrun:
        return f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    return device


@cache_app.command("info")
def cache_info(cache: Path = typer.Argument(..., metavar="CACHE")) -> None:
    """Model, sites, dtype, items, rows, bytes, versions and git commit of a cache."""
    from activations.maintenance import info

    summary = info(cache)
    typer.echo(f"cache: {cache}")
    typer.echo(f"model: {summary['model']}")
    sites = summary["sites"]
    typer.echo(f"sites: {len(sites)} ({', '.join(f'{name} {dim}' for name, dim in sites.items())})")
    for key in ("dtype", "positions", "dataset", "items", "rows", "shards", "bytes", "finalized", "git_commit"):
        typer.echo(f"{key}: {summary.get(key)}")
    typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items()))


@cache_app.command("verify")
def cache_verify(cache: Path = typer.Argument(..., metavar="CACHE")) -> None:
    """Check checksums, offsets, dims and finiteness of every shard; exit 1 when a problem is found."""
    from activations.maintenance import verify

    report = verify(cache)
    for problem in report.problems:
        typer.echo(f"problem: {problem}")
    typer.echo(f"{'ok' if report.ok else 'FAILED'}: {report.shards} shards, {report.items} items, {report.rows} rows, "
               f"{report.bytes} bytes")
    if not report.ok:
        raise typer.Exit(1)


@cache_app.command("finalize")
def cache_finalize(cache: Path = typer.Argument(..., metavar="CACHE")) -> None:
    """Merge the manifests written by the ranks of a multi-worker extraction (--shard k/N or torchrun)."""
    from activations.maintenance import finalize

    typer.echo(f"manifest: {finalize(cache)}")


@cache_app.command("export")
def cache_export(cache: Path = typer.Argument(..., metavar="CACHE"),
                 out: Path = typer.Option(..., help="The single .h5 file to write.")) -> None:
    """Copy a cache into one self-contained .h5 file (same layout as a shard, header included)."""
    from activations.maintenance import export

    typer.echo(f"exported: {export(cache, out)}")
