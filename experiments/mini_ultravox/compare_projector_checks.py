"""Is projector A's repeat WER really lower than projector B's? A paired bootstrap over the same utterances.

Two check_projector.py results on the same held-out utterances differ by a point or two of WER from one
projector to the next; 120 utterances cannot tell such a difference from chance by eye. This resamples the
utterances (the same resample for both projectors) and prints, per source and for all held-out utterances,
both corpus WERs and the difference A - B with its percentile interval: an interval that contains 0 is no
measured gain. Whisper-base's WER is compared the same way, as a check that both files scored the same audio
alike (it should differ by little more than synthesis noise). Where both files record the sha256 of each
utterance's samples, the held-out utterances whose samples were the same in both checks form one more group
("same audio"): espeak-ng's output can differ between processes, unless both checks shared an --audio-cache.

Usage: python -m experiments.mini_ultravox.compare_projector_checks A.json B.json [--n-boot 5000] \\
           [--out comparison.json]
       (A.json, B.json: `python -m experiments.mini_ultravox.check_projector --out ...` of each projector, best
       with one --audio-cache for both and --projector for the one not shipped)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from interp.provenance import provenance
from interp.stats import bootstrap_ci
from interp.text_metrics import word_edits

SYSTEMS = ("mini_ultravox", "whisper_base")  # the transcript fields check_projector.py writes
FIELDS = ("id", "source", "reference", *SYSTEMS)
LIBRISPEECH = "librispeech"  # the source of the real recordings; every other source is held-out synthetic speech
HELD_OUT = "held-out"  # the group of all held-out utterances
SAME_AUDIO = "same audio"  # the held-out utterances both checks heard as the same samples


def read_transcripts(path: Path) -> list[dict]:
    """The per-utterance transcripts of one check_projector.py result file; one clear line when unusable."""
    if not path.exists():
        raise SystemExit(f"{path} does not exist: write it with "
                         f"python -m experiments.mini_ultravox.check_projector --out {path}")
    try:
        transcripts = json.loads(path.read_text(encoding="utf-8"))["transcripts"]
        missing = {field for row in transcripts for field in FIELDS if field not in row}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"{path} is not a check_projector.py result with transcripts ({error!r})") from None
    if missing:
        raise SystemExit(f"{path}: transcripts without {', '.join(sorted(missing))}: not a check_projector.py result")
    return transcripts


def pair_up(a: list[dict], b: list[dict], names: tuple[str, str]) -> list[tuple[dict, dict]]:
    """The utterances of both files, matched by id; they must be the same utterances with the same references."""
    by_id = {row["id"]: row for row in b}
    if sorted(by_id) != sorted(row["id"] for row in a):
        raise SystemExit(f"{names[0]} and {names[1]} scored different utterances: compare checks of one held-out set")
    pairs = [(row, by_id[row["id"]]) for row in a]
    for row_a, row_b in pairs:
        if row_a["reference"] != row_b["reference"]:
            raise SystemExit(f"utterance {row_a['id']} has different references in {names[0]} and {names[1]}")
    return pairs


def has_audio_hashes(pairs: list[tuple[dict, dict]]) -> bool:
    """Whether both files record the sha256 of each utterance's samples (check_projector.py since 2026-11-27)."""
    return all("audio_sha256" in row for pair in pairs for row in pair)


def compare(pairs: list[tuple[dict, dict]], n_boot: int, seed: int) -> dict:
    """Per group (each held-out source, all held-out utterances, those heard as the same samples where both
    files say, LibriSpeech): WER of A and B, A - B with a 95 % interval, for mini-ultravox and Whisper-base."""
    sources = sorted({a["source"] for a, _ in pairs} - {LIBRISPEECH})
    members = {source: [p for p in pairs if p[0]["source"] == source] for source in sources}
    members[HELD_OUT] = [p for p in pairs if p[0]["source"] != LIBRISPEECH]
    if has_audio_hashes(pairs):
        members[SAME_AUDIO] = [(a, b) for a, b in members[HELD_OUT] if a["audio_sha256"] == b["audio_sha256"]]
    members[LIBRISPEECH] = [p for p in pairs if p[0]["source"] == LIBRISPEECH]
    result = {}
    for group, rows in members.items():
        if not rows:
            continue
        references = [a["reference"] for a, _ in rows]
        figures = {"n": len(rows)}
        for system in SYSTEMS:
            edits_a, words = word_edits(references, [a[system] for a, _ in rows])
            edits_b, _ = word_edits(references, [b[system] for _, b in rows])
            difference = bootstrap_ci(lambda ea, eb, w: (ea.sum() - eb.sum()) / w.sum(),
                                      np.array(edits_a), np.array(edits_b), np.array(words), n_boot=n_boot, seed=seed)
            figures[system] = {"wer_a": sum(edits_a) / sum(words), "wer_b": sum(edits_b) / sum(words),
                               "difference": difference.value, "low": difference.low, "high": difference.high}
        result[group] = figures
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="check_projector.py result of projector A (e.g. a new one)")
    parser.add_argument("b", type=Path, help="check_projector.py result of projector B (e.g. the shipped one)")
    parser.add_argument("--n-boot", type=int, default=5000, help="bootstrap resamples of the utterances")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    parser.add_argument("--out", type=Path, default=None, help="JSON with the figures and provenance")
    args = parser.parse_args(argv)

    pairs = pair_up(read_transcripts(args.a), read_transcripts(args.b), (str(args.a), str(args.b)))
    result = compare(pairs, args.n_boot, args.seed)
    print(f"A = {args.a}\nB = {args.b}\n(95 % paired bootstrap intervals, {args.n_boot} resamples of the utterances)")
    if has_audio_hashes(pairs):
        print(f"  {result.get(SAME_AUDIO, {'n': 0})['n']} of {result[HELD_OUT]['n']} held-out utterances had the "
              "same samples in both checks")
    else:
        print("  (one file has no audio hashes: whether both checks heard the same samples is unknown)")
    for group, figures in result.items():
        for system in SYSTEMS:
            f = figures[system]
            print(f"  {group:17s} n={figures['n']:4d}  {system:13s} WER A {f['wer_a']:.3f}  B {f['wer_b']:.3f}"
                  f"  A - B {f['difference']:+.3f} [{f['low']:+.3f}, {f['high']:+.3f}]")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"groups": result, "provenance": provenance(
            command="experiments/mini_ultravox/compare_projector_checks.py", seed=args.seed,
            config={"a": str(args.a), "b": str(args.b), "n_boot": args.n_boot, "level": 0.95})}, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
