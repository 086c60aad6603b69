"""The report's first section: every spoken set of the study, its items, labels, speech and voices."""

from __future__ import annotations

from interp.report.common import Study, table

__all__ = ["sets_section"]


def sets_section(study: Study) -> str:
    from interp.data.info import summarize
    from interp.data.manifest import MANIFEST, SpokenSet

    out = study.out
    rows = []
    for manifest in sorted((out / "sets").rglob(MANIFEST)):
        summary = summarize(SpokenSet.open(manifest.parent))
        rows.append([manifest.parent.relative_to(out / "sets").as_posix(), summary.items,
                     ", ".join(f"{k} {v}" for k, v in summary.labels.items()), summary.duration_total,
                     ", ".join(f"{k} {v}" for k, v in summary.speech.items())])
    return ("<h2 id='sets'>Spoken sets</h2><p>Every set is a folder of 16 kHz wavs and a manifest; TTS voices and "
            "noise excerpts are seeded per item.</p>"
            + table(["set", "items", "labels", "speech (s)", "voices"], rows))
