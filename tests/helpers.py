"""Run the CLI as a user would: a fresh interpreter, stdout and stderr captured."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, cwd: Path | None = None) -> CliResult:
    """Run `interp ARGS` in a fresh interpreter and capture what the user would see."""
    completed = subprocess.run([sys.executable, "-m", "interp", *map(str, args)], capture_output=True, text=True,
                               cwd=cwd, timeout=1800, check=False)
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def capture_sites(model, batch, names: list[str]) -> dict:
    """Run `model.logits(batch)` with forward hooks on the named sites; returns each site's tensor."""
    sites, captured, handles = model.sites(), {}, []
    for name in names:
        site = sites[name]
        if site.take == "output":
            handles.append(site.module.register_forward_hook(
                lambda module, args, output, name=name: captured.__setitem__(name, output)))
        else:
            handles.append(site.module.register_forward_pre_hook(
                lambda module, args, name=name: captured.__setitem__(name, args[0])))
    try:
        model.logits(batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def reference_hidden_states(model, batch) -> tuple:
    """HF's own `output_hidden_states` for a speech adapter's batch (Ultravox: its LLM on the merged embeddings)."""
    inputs = batch.inputs
    with torch.no_grad():
        if "audio_token_start_idx" in inputs:
            embeds = model.model.embed(inputs["input_ids"], inputs["audio_values"], inputs["audio_lens"],
                                       inputs["audio_token_start_idx"], inputs["audio_token_len"])
            return model.model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                              output_hidden_states=True).hidden_states
        return model.model(**inputs, output_hidden_states=True).hidden_states


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there while the script runs
    spec.loader.exec_module(module)
    return module
