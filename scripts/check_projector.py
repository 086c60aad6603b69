"""Acceptance check of the shipped mini-ultravox projector: "repeat exactly what you heard" WER (issue 6).

Runs the model users get (`load_model("mini-ultravox")`, i.e. the projector in
interp/resources/mini_ultravox_projector.safetensors) on the held-out utterances of the shipped projector's
training: interp/resources/mini_ultravox_heldout.json (by default), or the validation split of another
train_projector.py work folder (--work). Their sentences come from a template family and SmolLM2 topics/styles
that training never saw, spoken with voice settings outside the training ranges. The audio is synthesised
again from the recorded text and settings (both TTS engines are deterministic given the settings' seed).
Prints mini-ultravox's WER (greedy, the training prompt) with Whisper-base's WER on the same audio beside
it, per source and overall, then both on the 4 shipped LibriSpeech utterances (real read speech).
Writes every transcript and the figures, with provenance, to --out.

Usage: python scripts/check_projector.py --out results/projector-check.json
       python scripts/check_projector.py --work runs/projector --out ...   (a work folder's own held-out split:
       its sentences.json, which `python scripts/train_projector.py --work ... --prep-only` makes)
       python scripts/check_projector.py --more --out ...   (500 held-out utterances: the 120 and 380 more)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import transformers

from interp.data.audio import read_audio
from interp.data.loaders import load_librispeech
from interp.data.tts import open_engine, settings_from_dict
from interp.models.mini import load_model
from interp.provenance import provenance
from interp.resources import resource_path
from interp.task_prompts import TASK_PROMPTS
from interp.text_metrics import word_error_rate

REPEAT_PROMPT = TASK_PROMPTS["transcribe"].prompt  # the instruction the projector was trained on


HELD_OUT = "mini_ultravox_heldout.json"  # the shipped projector's held-out split, beside it in interp.resources
HELD_OUT_MORE = "mini_ultravox_heldout_more.json"  # 380 more made the same way (scripts/extend_heldout.py)


def held_out_items(work: Path | None, limit: int | None, more: bool = False) -> list[dict]:
    """The held-out utterances: the shipped file's (with `more`, followed by HELD_OUT_MORE's), or the
    validation split of the work folder `work`."""
    if work is None:
        items = json.loads(resource_path(HELD_OUT).read_text(encoding="utf-8"))["items"]
        if more:
            items += json.loads(resource_path(HELD_OUT_MORE).read_text(encoding="utf-8"))["items"]
    else:
        path = work / "sentences.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run scripts/train_projector.py --work {work} --prep-only first")
        items = json.loads(path.read_text())["items"]["val"]
    return items[:limit] if limit else items


def speak(item: dict) -> np.ndarray:
    return open_engine(item["engine"]).speak(item["text"], settings_from_dict(item["settings"])).samples


def repeat_and_transcribe(model, whisper, audio: list[np.ndarray], references: list[str]) -> tuple[list, list]:
    from tqdm import tqdm

    repeats = [model.generate(clip, REPEAT_PROMPT, max_new_tokens=2 * len(ref.split()) + 4)
               for clip, ref in tqdm(list(zip(audio, references)), desc="mini-ultravox repeat", unit="utt")]
    return repeats, whisper.transcribe(audio)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help=f"train_projector.py work folder whose validation split to use (default: {HELD_OUT})")
    parser.add_argument("--out", type=Path, default=None, help="JSON with transcripts, WERs and provenance")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out utterances only")
    parser.add_argument("--more", action="store_true",
                        help=f"add the 380 utterances of {HELD_OUT_MORE} (500 in all, ~25 min): intervals about "
                             "half as wide as the 120's")
    args = parser.parse_args(argv)
    if args.more and args.work is not None:
        parser.error("--more adds to the shipped held-out set, not to a --work folder's")
    transformers.utils.logging.set_verbosity_error()
    start = time.perf_counter()

    items = held_out_items(args.work, args.limit, args.more)
    audio = [speak(item) for item in items]
    references = [item["text"] for item in items]
    model, whisper = load_model("mini-ultravox"), load_model("mini-whisper")
    repeats, whisper_texts = repeat_and_transcribe(model, whisper, audio, references)

    result: dict = {"held_out": {}, "librispeech": {}}
    print(f"held-out utterances: {len(items)} ({sum(a.size for a in audio) / 16_000:.0f} s of speech)")
    for source in sorted({item["source"] for item in items}) + ["all"]:
        rows = [i for i, item in enumerate(items) if source in ("all", item["source"])]
        refs = [references[i] for i in rows]
        figures = {"n": len(rows), "mini_ultravox_wer": word_error_rate(refs, [repeats[i] for i in rows]),
                   "whisper_base_wer": word_error_rate(refs, [whisper_texts[i] for i in rows])}
        result["held_out"][source] = figures
        print(f"  {source:17s} n={figures['n']:4d}  mini-ultravox repeat WER {figures['mini_ultravox_wer']:.3f}"
              f"   Whisper-base WER {figures['whisper_base_wer']:.3f}")

    libri = load_librispeech(resource_path("speech/librispeech"))
    libri_audio = [read_audio(item.recording)[0] for item in libri]
    libri_refs = [item.transcript for item in libri]
    libri_repeats, libri_whisper = repeat_and_transcribe(model, whisper, libri_audio, libri_refs)
    result["librispeech"] = {"n": len(libri), "mini_ultravox_wer": word_error_rate(libri_refs, libri_repeats),
                             "whisper_base_wer": word_error_rate(libri_refs, libri_whisper)}
    print(f"  LibriSpeech       n={len(libri):4d}  mini-ultravox repeat WER "
          f"{result['librispeech']['mini_ultravox_wer']:.3f}   Whisper-base WER "
          f"{result['librispeech']['whisper_base_wer']:.3f}")
    print(f"took {time.perf_counter() - start:.0f} s")

    if args.out:
        result["transcripts"] = [
            {"id": item["id"], "source": item["source"], "engine": item["engine"], "reference": ref,
             "mini_ultravox": rep, "whisper_base": wh}
            for item, ref, rep, wh in zip(items, references, repeats, whisper_texts)] + [
            {"id": item.id, "source": "librispeech", "reference": ref, "mini_ultravox": rep, "whisper_base": wh}
            for item, ref, rep, wh in zip(libri, libri_refs, libri_repeats, libri_whisper)]
        result["provenance"] = provenance(command="scripts/check_projector.py", seed=None,
                                          config={"held_out": str(args.work or HELD_OUT)
                                                  + (f" + {HELD_OUT_MORE}" if args.more else ""), "limit": args.limit,
                                                  "prompt": REPEAT_PROMPT, "model": "mini-ultravox"})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
