"""The systems named on the command line (`--systems`): parsed and checked at once, loaded when asked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from interp.errors import InterpError
from interp.models.base import SpeechLM
from interp.models.cascade import Cascade, Oracle
from interp.models.endpoint import EndpointSystem
from interp.models.implicit_cascade import ImplicitCascade
from interp.models.text_lm import TextLM

if TYPE_CHECKING:
    from interp.models.checkpoints import LoadOptions

__all__ = ["System", "SystemSpec", "parse_systems"]

System = SpeechLM | Cascade | Oracle | TextLM | ImplicitCascade | EndpointSystem
"""Anything the harness runs: a speech LLM (audio in), a cascade (audio -> ASR -> text LLM), the oracle or a bare
text LLM (gold transcript in), an implicit cascade (logit-lens text in), or a model behind an endpoint (generation
only)."""

_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# interp.models.mini and .checkpoints are imported where a system is named or loaded: they pull in every
# architecture's transformers classes (seconds), which `interp stats` and the file readers never need.


def _safe_name(text: str) -> str:
    return _NAME.sub("-", text).strip("-.") or "system"


@dataclass(frozen=True)
class SystemSpec:
    """One entry of `--systems`: a model name known to load_model, a checkpoint spec (`kind:PATH,...`) or
    `endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1]`; any of them may end in `,name=NAME`,
    the folder name of its predictions."""

    spec: str
    name: str

    @property
    def is_endpoint(self) -> bool:
        return self.spec.startswith("endpoint:")

    def load(self, options: LoadOptions | None = None) -> System:
        """Build the system (models are loaded here, not when the spec is parsed)."""
        if self.is_endpoint:
            return EndpointSystem.from_spec(self.spec, name=self.name)
        from interp.models.mini import load_model

        return load_model(self.spec, options=options)


def _split_entries(text: str) -> list[str]:
    """Comma-separated specs; an entry `key=value` continues the spec before it (checkpoint and endpoint
    specs carry their own comma-separated fields)."""
    entries: list[str] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if entries and re.match(r"^[A-Za-z_]+=", entry) and (":" in entries[-1] or entry.startswith("name=")):
            entries[-1] += "," + entry
        else:
            entries.append(entry)
    return entries


def _default_name(entry: str, spec: str) -> str:
    """The folder name of a system given without `name=`; InterpError for an unknown model or checkpoint kind."""
    from interp.models.checkpoints import CHECKPOINT_SPECS
    from interp.models.mini import MODEL_CARDS

    if entry.startswith("endpoint:"):
        EndpointSystem.from_spec(spec)  # validates the fields
        return "endpoint-" + EndpointSystem.spec_fields(spec)["model"]
    if ":" in spec:
        kind, _, rest = spec.partition(":")
        if kind not in CHECKPOINT_SPECS:
            raise InterpError(f"unknown system {entry!r}: a checkpoint spec is one of "
                              f"{', '.join(CHECKPOINT_SPECS.values())}, an endpoint is endpoint:URL,model=NAME")
        return f"{kind}-{Path(rest.split(',')[0]).name}"
    if spec not in MODEL_CARDS:
        raise InterpError(f"unknown system {spec!r}; known models: {', '.join(MODEL_CARDS)} (interp models "
                          "list), a checkpoint spec or endpoint:URL,model=NAME")
    return spec


def parse_systems(text: str) -> list[SystemSpec]:
    """The systems of `--systems` (checked, not loaded). Raises InterpError for an unknown model name, a
    malformed endpoint spec or two systems with the same name."""
    specs: list[SystemSpec] = []
    for entry in _split_entries(text):
        head, *fields = entry.split(",")
        names = [f for f in fields if f.startswith("name=")]
        spec = ",".join([head] + [f for f in fields if not f.startswith("name=")])
        default = _default_name(entry, spec)
        specs.append(SystemSpec(spec, _safe_name(names[-1][len("name="):] if names else default)))
    if not specs:
        raise InterpError("no system given: --systems takes comma-separated model names, e.g. mini-ultravox,oracle")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise InterpError(f"two systems are called {spec.name!r}; add ,name=OTHER to one of them")
        seen.add(spec.name)
    return specs
