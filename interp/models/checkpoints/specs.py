"""The text of a checkpoint spec (`kind:PATH,key=PATH,...`): the spec of each kind, and its tail read as fields."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from interp.errors import InterpError

__all__ = ["CHECKPOINT_SPECS", "spec_path", "spec_fields"]

CHECKPOINT_SPECS = {
    "qwen2-audio": "qwen2-audio:PATH",
    "ultravox": "ultravox:PATH[,audio=PATH][,llm=PATH]",
    "phi4mm": "phi4mm:PATH[,speech_lora=off]",
    "cascade": "cascade:asr=PATH,llm=PATH | cascade:asr=PATH,llm=self,speech=SPEC",
    "disguise": "disguise:asr=PATH|NAME,llm=PATH|NAME|SPEC",
}
"""The model spec of each checkpoint kind, as `--model` takes it."""


def spec_path(text: str) -> Path:
    """The path a spec entry names, `~` expanded."""
    return Path(text.strip()).expanduser()


def spec_fields(spec: str, rest: str, *, allowed: Collection[str]) -> tuple[str | None, dict[str, Path]]:
    """(leading positional entry or None, {key: path}) of a comma-separated `PATH,key=PATH,...` tail."""
    entries = [entry.strip() for entry in rest.split(",")]
    head = None if "=" in entries[0] else entries.pop(0)
    fields: dict[str, Path] = {}
    for entry in entries:
        key, equals, value = (part.strip() for part in entry.partition("="))
        if not equals or key not in allowed or not value:
            raise InterpError(f"cannot read {entry!r} in {spec!r}: expected one of "
                              f"{', '.join(f'{name}=PATH' for name in allowed)}")
        if key in fields:
            raise InterpError(f"{key}= appears twice in {spec!r}")
        fields[key] = spec_path(value)
    return head, fields
