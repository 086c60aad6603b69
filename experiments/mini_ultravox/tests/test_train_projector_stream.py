"""train_projector_stream.py (training on speech synthesised as it trains) and its two helpers,
pack_stack_weights.py and stream_sentences.py."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments.mini_ultravox import pack_stack_weights as pack
from experiments.mini_ultravox import stream_sentences as sentences_script
from experiments.mini_ultravox import train_projector as tp
from experiments.mini_ultravox import train_projector_stream as stream

SENTENCES = ["The ferry left the harbour an hour late.", "Nobody expected the lecture to end so early.",
             "She painted the fence a bright shade of green.", "Our neighbour grows tomatoes on the balcony.",
             "The train was crowded with tired commuters.", "He forgot his umbrella at the station again."]


def _sentences(path: Path) -> Path:
    items = [{"text": text, "source": "fortunes"} for text in SENTENCES]
    path.write_bytes(gzip.compress(json.dumps({"items": items}).encode()))
    return path


def _losses(work: Path) -> list[tuple]:
    return [(e["step"], e["loss"], e["ce"], e["kl"], e["ctc"])
            for e in map(json.loads, (work / "log.jsonl").read_text().splitlines())]


def test_toy_stream_trains_logs_resumes_and_exports(tmp_path) -> None:
    sentences = _sentences(tmp_path / "s.json.gz")
    common = ["--sentences", str(sentences), "--stack", "tiny-ultravox", "--steps", "3", "--batch-size", "3",
              "--kl-batch", "2", "--workers", "2", "--teacher-batch", "4", "--threads", "1", "--ckpt-every", "1",
              "--piper-fraction", "1.0"]  # piper's output is a function of text and settings (espeak-ng's varies)
    a, b = tmp_path / "a", tmp_path / "b"
    exported = tmp_path / "out" / "projector.safetensors"
    result = stream.main(["--work", str(a), *common, "--export", str(exported)])
    assert result["completed"] and result["step"] == 3

    entries = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries] == [1, 2, 3]
    for entry in entries:
        assert {"loss", "ce", "kl", "ctc", "lr", "items_per_s", "wait_speech_s", "teacher_s", "speech_s"} <= set(entry)
        assert entry["ce"] > 0 and entry["kl"] > 0 and entry["speech_s"] > 1
        assert entry["loss"] == pytest.approx(entry["ce"] + entry["kl"] + entry["ctc"], rel=1e-5)

    # Each step speaks its batch in fresh voices: the same sentence never comes twice with the same settings.
    args = stream.parse_args(["--sentences", str(sentences), "--work", str(a), "--batch-size", "3", "--kl-batch", "2"])
    tasks = [t for step in range(4) for t in stream.step_tasks(args, stream.read_sentences(sentences), step, 10)]
    assert len({json.dumps([t["text"], t["settings"]]) for t in tasks}) == len(tasks) == 12
    assert {t["text"] for t in tasks} == set(SENTENCES)
    assert [("kl_prompt" in t) for t in tasks[:3]] == [True, True, False]

    card = json.loads(exported.with_suffix(".json").read_text())
    assert card["data"]["utterances_heard"] == 9 and card["data"]["sources"] == {"fortunes": 6}
    assert card["training"]["steps_done"] == 3 and card["training"]["script"].endswith("train_projector_stream.py")
    assert card["frozen_weights_sha256"] == result["weights_sha256"]

    # Killed after step 1 (its checkpoint kept, later lines of its log dropped on resume): the resumed run
    # retraces the uninterrupted one.
    stream.main(["--work", str(b), *common, "--steps", "3", "--max-minutes", "0"])
    assert [e[0] for e in _losses(b)] == [1]
    stream.main(["--work", str(b), *common])
    resumed, straight = _losses(b), _losses(a)
    assert [e[0] for e in resumed] == [1, 2, 3]
    for x, y in zip(resumed, straight):
        assert x == pytest.approx(y, rel=1e-4, abs=1e-5)
    assert torch.allclose(load_file(str(b / "checkpoint.safetensors"))["linear_1.weight"],
                          load_file(str(a / "checkpoint.safetensors"))["linear_1.weight"], atol=1e-5)

    # A work folder keeps the configuration it was started with.
    with pytest.raises(SystemExit, match="train_config"):
        stream.main(["--work", str(a), *common, "--lr", "1e-3"])


def test_worker_features_are_those_of_the_stack(tmp_path) -> None:
    """Workers rebuild the feature extractor from its config (see _init_worker): same features as the stack's."""
    import numpy as np

    fe = tp.load_stack("tiny-ultravox")["feature_extractor"]
    stream._init_worker(type(fe), fe.to_dict(), 1)
    task = {"engine": "piper", "text": SENTENCES[0],
            "settings": {"type": "PiperSettings", "length_scale": 1.1, "noise_scale": 0.5, "noise_w": 0.7, "seed": 3}}
    features, frames, seconds = stream.speak(task)
    from interp.data.tts import open_engine, settings_from_dict

    samples = open_engine("piper").speak(task["text"], settings_from_dict(task["settings"])).samples
    direct = fe([samples], sampling_rate=16_000, padding="longest", pad_to_multiple_of=fe.hop_length,
                truncation=False, return_attention_mask=True, return_tensors="np")
    assert np.array_equal(features, direct["input_features"][0]) and frames == int(direct["attention_mask"].sum())
    assert seconds == pytest.approx(len(samples) / 16_000)


def test_packed_weights_rebuild_the_same_stack(tmp_path, capsys) -> None:
    """The small folder a GPU machine is sent (GGUF + float16 encoder) gives the carrier packages' stack, bit for
    bit: the fingerprint of the frozen weights read from it equals the one of load_stack's."""
    pack.main([str(tmp_path / "stack")])
    printed = capsys.readouterr().out
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "stack").rglob("*") if p.is_file()}
    assert sizes["encoder.safetensors"] < 42e6 and sum(sizes.values()) < 145e6
    rebuilt = stream.weights_fingerprint(stream.load_weights_stack(tmp_path / "stack", "cpu"))
    assert f"frozen weights sha256 {rebuilt}" in printed


def test_stream_sentences_take_the_blocks_and_leave_out_held_out(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    train = [{"text": SENTENCES[0], "source": "template"}, {"text": SENTENCES[1], "source": "lm"}]
    val = [{"text": SENTENCES[2], "source": "template"}]
    (work / "sentences.json").write_text(json.dumps({"items": {"train": train, "val": val}}))
    (work / "extra_sentences.json").write_text(json.dumps({"items": [{"text": SENTENCES[3], "source": "wordnet"},
                                                                     {"text": SENTENCES[2], "source": "wordnet"}]}))
    out = tmp_path / "stream.json.gz"
    counts = sentences_script.main([str(work), "--out", str(out)])
    data = json.loads(gzip.decompress(out.read_bytes()))
    assert [it["text"] for it in data["items"]] == [SENTENCES[0], SENTENCES[1], SENTENCES[3]]
    assert counts == {"lm": 1, "template": 1, "wordnet": 1} and data["spec"]["dropped_held_out"] == 1
