"""Acceptance check of the shipped mini-ultravox projector: "repeat exactly what you heard" WER (issue 6).

Runs the model users get (`load_model("mini-ultravox")`, i.e. the projector in
interp/resources/mini_ultravox_projector.safetensors) on the held-out utterances of the shipped projector's
training: experiments/mini_ultravox/data/mini_ultravox_heldout.json (by default), or the validation split of another
train_projector.py work folder (--work). Their sentences come from a template family and SmolLM2 topics/styles
that training never saw, spoken with voice settings outside the training ranges. The audio is synthesised
again from the recorded text and settings (piper's output is reproducible; espeak-ng's, see below, nearly).
Prints mini-ultravox's WER (greedy, the training prompt; --no-repeat-ngram / --repetition-penalty add
transformers' loop guards) with Whisper-base's WER on the same audio beside it, per source and overall, then
both on the 4 shipped LibriSpeech utterances (real read speech).
Writes every transcript (with the sha256 of the samples it was made from) and the figures, with provenance, to
--out.

espeak-ng's output for a few sentences differs from one process to the next, so two checks that synthesise
their own audio do not hear quite the same utterances. --audio-cache DIR keeps each utterance's samples (and
Whisper-base's transcript of them) the first time and reuses them afterwards: checks of two projectors made
with the same DIR score the same samples, and all but the first skip synthesis and Whisper. --projector PATH
scores an exported projector in place of the shipped one, without copying it into interp/resources.

Usage (from the repository root; C=experiments.mini_ultravox.check_projector):
       python -m $C --out results/projector-check.json
       python -m $C --more --audio-cache runs/check-audio --out results/shipped-check500.json
       python -m $C --more --audio-cache runs/check-audio \\
           --projector runs/x/export/mini_ultravox_projector.safetensors --out results/x-check500.json
       python -m $C --work runs/projector --out ...   (a work folder's own held-out split: its sentences.json,
       which `python -m experiments.mini_ultravox.train_projector --work ... --prep-only` makes)
       python -m $C --more --out ...   (500 held-out utterances: the 120 and 380 more)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import transformers
from safetensors.torch import load_file
from tqdm import tqdm

from experiments.mini_ultravox import DATA
from interp.data.audio import read_audio
from interp.data.loaders import load_librispeech
from interp.data.tts import open_engine, settings_from_dict
from interp.models.mini import load_model
from interp.provenance import provenance
from interp.resources import resource_path
from interp.task_prompts import task_prompt
from interp.text_metrics import word_error_rate

REPEAT_PROMPT = task_prompt("transcribe").prompt  # the instruction the projector was trained on


HELD_OUT = "mini_ultravox_heldout.json"  # the shipped projector's held-out split, in experiments/mini_ultravox/data
HELD_OUT_MORE = "mini_ultravox_heldout_more.json"  # 380 more made the same way (extend_heldout.py)


def held_out_items(work: Path | None, limit: int | None, more: bool = False) -> list[dict]:
    """The held-out utterances: the shipped file's (with `more`, followed by HELD_OUT_MORE's), or the
    validation split of the work folder `work`."""
    if work is None:
        items = json.loads((DATA / HELD_OUT).read_text(encoding="utf-8"))["items"]
        if more:
            items += json.loads((DATA / HELD_OUT_MORE).read_text(encoding="utf-8"))["items"]
    else:
        path = work / "sentences.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run python -m experiments.mini_ultravox.train_projector "
                             f"--work {work} --prep-only first")
        items = json.loads(path.read_text())["items"]["val"]
    return items[:limit] if limit else items


WHISPER_CACHE = "mini-whisper-transcripts.json"  # in --audio-cache: audio sha256 -> Whisper-base's transcript


def speak(item: dict, cache: Path | None) -> np.ndarray:
    """The item's audio: synthesised from its text and settings, or the samples an earlier check left in
    `cache` for the same engine, text and settings."""
    key = hashlib.sha256(json.dumps([item["engine"], item["text"], item["settings"]], sort_keys=True).encode())
    path = cache / f"{key.hexdigest()[:32]}.npy" if cache is not None else None
    if path is not None and path.exists():
        return np.load(path)
    samples = open_engine(item["engine"]).speak(item["text"], settings_from_dict(item["settings"])).samples
    if path is not None:
        partial = path.with_suffix(".partial.npy")  # renamed when complete: a killed check leaves no half file
        np.save(partial, samples)
        partial.replace(path)
    return samples


def samples_sha256(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def whisper_transcripts(audio: list[np.ndarray], hashes: list[str], cache: Path | None) -> list[str]:
    """Whisper-base's transcript of each clip; with a cache, only of clips it has not transcribed before."""
    path = cache / WHISPER_CACHE if cache is not None else None
    known = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else {}
    todo = [i for i, sha in enumerate(hashes) if sha not in known]
    if todo:
        texts = load_model("mini-whisper").transcribe([audio[i] for i in todo])
        known.update((hashes[i], text) for i, text in zip(todo, texts))
        if path is not None:
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(known, indent=0), encoding="utf-8")
            partial.replace(path)
    return [known[sha] for sha in hashes]


def repeats_of(model, audio: list[np.ndarray], references: list[str]) -> list[str]:
    return [model.generate(clip, REPEAT_PROMPT, max_new_tokens=2 * len(ref.split()) + 4)
            for clip, ref in tqdm(list(zip(audio, references)), desc="mini-ultravox repeat", unit="utt")]


def load_mini_ultravox(projector: Path | None):
    """mini-ultravox with the shipped projector, or with the exported one at `projector`."""
    model = load_model("mini-ultravox")
    if projector is None:
        return model
    if not projector.is_file():
        raise SystemExit(f"--projector {projector}: no such file")
    try:
        model.model.multi_modal_projector.load_state_dict(load_file(str(projector)), strict=True)
    except (RuntimeError, OSError) as error:
        first = str(error).strip().splitlines()[0]
        raise SystemExit(f"--projector {projector}: not a mini-ultravox projector ({first})") from None
    model.weights = {"projector": str(projector), "sha256": hashlib.sha256(projector.read_bytes()).hexdigest()}
    return model


def guard_loops(model, no_repeat_ngram: int, repetition_penalty: float) -> dict:
    """Set transformers' loop guards on the LLM's generation config (0 and 1.0 leave greedy decoding as it is),
    so that a check can separate what the projector heard from answers that repeat themselves until cut off."""
    config = model.model.language_model.generation_config
    config.no_repeat_ngram_size = no_repeat_ngram
    config.repetition_penalty = repetition_penalty
    return {"no_repeat_ngram_size": no_repeat_ngram, "repetition_penalty": repetition_penalty}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help=f"train_projector.py work folder whose validation split to use (default: {HELD_OUT})")
    parser.add_argument("--out", type=Path, default=None, help="JSON with transcripts, WERs and provenance")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out utterances only")
    parser.add_argument("--more", action="store_true",
                        help=f"add the 380 utterances of {HELD_OUT_MORE} (500 in all, ~25 min): intervals about "
                             "half as wide as the 120's")
    parser.add_argument("--audio-cache", type=Path, default=None,
                        help="folder keeping each utterance's samples and Whisper-base's transcript: checks made "
                             "with the same folder score the same audio (and skip synthesis and Whisper)")
    parser.add_argument("--projector", type=Path, default=None,
                        help="exported projector (safetensors) to score instead of the shipped one")
    parser.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N",
                        help="forbid any N-gram twice in an answer (transformers' no_repeat_ngram_size; "
                             "default 0: plain greedy, as the acceptance figures)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, metavar="X",
                        help="penalise tokens already in the answer (transformers' repetition_penalty: their "
                             "positive logits divided by X, negative ones multiplied; default 1.0: none)")
    args = parser.parse_args(argv)
    if args.no_repeat_ngram < 0 or args.repetition_penalty <= 0:
        parser.error("--no-repeat-ngram must be >= 0 and --repetition-penalty > 0")
    if args.more and args.work is not None:
        parser.error("--more adds to the shipped held-out set, not to a --work folder's")
    transformers.utils.logging.set_verbosity_error()
    start = time.perf_counter()

    items = held_out_items(args.work, args.limit, args.more)
    libri = load_librispeech(resource_path("speech/librispeech"))
    model = load_mini_ultravox(args.projector)
    decoding = guard_loops(model, args.no_repeat_ngram, args.repetition_penalty)
    if args.audio_cache is not None:
        args.audio_cache.mkdir(parents=True, exist_ok=True)
    audio = [speak(item, args.audio_cache) for item in tqdm(items, desc="speak", unit="utt")]
    audio += [read_audio(item.recording)[0] for item in libri]  # the held-out clips, then LibriSpeech's
    hashes = [samples_sha256(clip) for clip in audio]
    references = [item["text"] for item in items] + [item.transcript for item in libri]
    repeats = repeats_of(model, audio, references)
    whisper_texts = whisper_transcripts(audio, hashes, args.audio_cache)

    def figures(rows: list[int]) -> dict:
        refs = [references[i] for i in rows]
        return {"n": len(rows), "mini_ultravox_wer": word_error_rate(refs, [repeats[i] for i in rows]),
                "whisper_base_wer": word_error_rate(refs, [whisper_texts[i] for i in rows])}

    result: dict = {"held_out": {}}
    print(f"held-out utterances: {len(items)} ({sum(a.size for a in audio[:len(items)]) / 16_000:.0f} s of speech)")
    for source in sorted({item["source"] for item in items}) + ["all"]:
        result["held_out"][source] = figures([i for i, item in enumerate(items) if source in ("all", item["source"])])
    result["librispeech"] = figures(list(range(len(items), len(audio))))
    for name, f in [*result["held_out"].items(), ("LibriSpeech", result["librispeech"])]:
        print(f"  {name:17s} n={f['n']:4d}  mini-ultravox repeat WER {f['mini_ultravox_wer']:.3f}"
              f"   Whisper-base WER {f['whisper_base_wer']:.3f}")
    print(f"took {time.perf_counter() - start:.0f} s")

    if args.out:
        rows = [{"id": item["id"], "source": item["source"], "engine": item["engine"]} for item in items]
        rows += [{"id": item.id, "source": "librispeech"} for item in libri]
        result["transcripts"] = [
            {**row, "reference": ref, "mini_ultravox": rep, "whisper_base": wh, "audio_sha256": sha}
            for row, ref, rep, wh, sha in zip(rows, references, repeats, whisper_texts, hashes)]
        result["provenance"] = provenance(command="experiments/mini_ultravox/check_projector.py", seed=None,
                                          config={"held_out": str(args.work or HELD_OUT)
                                                  + (f" + {HELD_OUT_MORE}" if args.more else ""), "limit": args.limit,
                                                  "prompt": REPEAT_PROMPT, "model": "mini-ultravox",
                                                  "weights": model.weights, "decoding": decoding,
                                                  "audio_cache": str(args.audio_cache) if args.audio_cache else None})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
