"""Checkpoints by local path: tiny models saved as their real releases are, loaded back through `load_checkpoint`.

Each loaded system must compute exactly what the original computes on the same audio; a folder that is
not a checkpoint, or a checkpoint whose keys do not fit, must fail with one line that says what is wrong.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, WhisperForConditionalGeneration

from interp.data.audio import write_wav
from interp.erasure.fit import _model_tokenizer
from interp.errors import InterpError
from interp.models import mini
from interp.models.cascade import Cascade
from interp.models.checkpoints import (
    LoadOptions,
    WhisperCheckpointASR,
    load_checkpoint,
    load_checkpoint_tokenizer,
)
from interp.models.checkpoints import folders as checkpoint_folders
from interp.models.checkpoints.folders import has_tokenizer
from interp.models.mini import load_model, load_tokenizer
from interp.models.text_lm import TextLM
from interp.models.tiny import (
    tiny_phi4mm,
    tiny_qwen2_audio,
    tiny_text_lm,
    tiny_ultravox,
    tiny_whisper,
)
from interp.models.tiny_releases import (
    ULTRAVOX_AUDIO_ID,
    ULTRAVOX_TEXT_ID,
    add_tiny_speech_lora,
    save_tiny_checkpoints,
)
from interp.models.ultravox_lm import UltravoxSpeechLM
from interp.models.weights import WeightsMissing
from tests.helpers import run_cli

PROMPT = "What is the sentiment? <|audio|> Answer with one word."
CHOICES = ["positive", "negative"]
FIXIE_FIELDS = {"model_type": "ultravox", "architectures": ["UltravoxModel"], "hidden_size": 64, "stack_factor": 8,
                "norm_init": 0.4, "projector_act": "swiglu", "projector_ln_mid": True, "audio_latency_block_size": None,
                "ignore_index": -100, "llm_only_training": False, "torch_dtype": "float32",
                "auto_map": {"AutoConfig": "ultravox_config.UltravoxConfig",
                             "AutoModel": "ultravox_model.UltravoxModel"},
                "text_model_lora_config": {"r": 0, "lora_alpha": 8, "target_modules": ["k_proj", "q_proj"]}}
"""What fixie-ai's UltravoxConfig writes besides the ids and sub-configs (ultravox_config.py, to_diff_dict)."""


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32) for seconds in (0.6, 0.4)]


def logits(system, audio: list[np.ndarray]) -> torch.Tensor:
    return system.logits(system.prepare(audio, [PROMPT] * len(audio)))


def load(spec: str, **options: str) -> object:
    return load_checkpoint(spec, options=LoadOptions(**options))


def one_line_error(error_type: type[Exception], spec: str) -> str:
    with pytest.raises(error_type) as caught:
        load(spec)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# Qwen2-Audio and Phi-4-multimodal


def test_qwen2_audio_loads_back_and_takes_the_processor_chat_template(tmp_path, audio) -> None:
    """Qwen2-Audio-Instruct keeps its chat template on the processor only (legacy chat_template.json): the
    loaded tokenizer gets it, so prompts read the same."""
    tiny = tiny_qwen2_audio(seed=0)
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": tiny.tokenizer.chat_template}))
    loaded = load(f"qwen2-audio:{tmp_path}")
    assert loaded.name == f"qwen2-audio:{tmp_path}"
    assert loaded.tokenizer.chat_template == tiny.tokenizer.chat_template
    assert torch.equal(logits(loaded, audio[:1]), logits(tiny, audio[:1]))  # one clip: both pad it to 30 s


def test_a_base_qwen2_audio_gets_no_chat_template(tmp_path) -> None:
    """Without a stored template the processor holds its class default, meant for the Instruct model only."""
    tiny = tiny_qwen2_audio(seed=0)
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    assert not load(f"qwen2-audio:{tmp_path}").tokenizer.chat_template


def test_phi4mm_loads_back(tmp_path, audio) -> None:
    """Without its speech LoRA (which tests/test_phi4mm_speech_lora.py covers) only when the spec says so."""
    tiny = tiny_phi4mm(seed=0)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    tiny.feature_extractor.save_pretrained(tmp_path)
    assert torch.equal(logits(load(f"phi4mm:{tmp_path},speech_lora=off"), audio[:1]), logits(tiny, audio[:1]))


# Ultravox, as fixie-ai releases it


@pytest.fixture(scope="module")
def ultravox() -> UltravoxSpeechLM:
    return tiny_ultravox(seed=0)


@pytest.fixture(scope="module")
def expected(ultravox, audio) -> torch.Tensor:
    """The tiny Ultravox's logits, which every loaded copy must reproduce."""
    return logits(ultravox, audio)


@pytest.fixture(scope="module")
def bases(ultravox, tmp_path_factory) -> dict[str, Path]:
    """The frozen parts as their own releases: a Whisper checkpoint (the encoder is the tiny one's, the
    decoder random) and a Llama checkpoint with its tokenizer."""
    root = tmp_path_factory.mktemp("bases")
    with torch.random.fork_rng():
        whisper = WhisperForConditionalGeneration(ultravox.model.config.audio_config)
    whisper.model.encoder.load_state_dict(ultravox.model.audio_tower.state_dict(), strict=True)
    whisper.save_pretrained(root / "whisper")
    ultravox.feature_extractor.save_pretrained(root / "whisper")
    ultravox.model.language_model.save_pretrained(root / "llama")
    ultravox.tokenizer.save_pretrained(root / "llama")
    return {"audio": root / "whisper", "llm": root / "llama"}


def fixie_folder(folder: Path, ultravox: UltravoxSpeechLM, *, prefixes: tuple[str, ...], config: dict,
                 extra: dict[str, torch.Tensor] | None = None, shards: int = 1) -> Path:
    """config.json + safetensors holding only the keys under `prefixes`, as fixie-ai's diff_state_dict saves
    them: one model.safetensors, or `shards` files and their model.safetensors.index.json."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**FIXIE_FIELDS, **config}))
    tensors = {key: value.contiguous() for key, value in ultravox.model.state_dict().items()
               if key.startswith(prefixes) and key != "language_model.lm_head.weight"}  # tied to the embeddings
    tensors.update(extra or {})
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return folder
    weight_map = {}
    for index in range(shards):
        name, keys = f"model-{index + 1:05d}-of-{shards:05d}.safetensors", sorted(tensors)[index::shards]
        save_file({key: tensors[key] for key in keys}, folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("layout", ["projector, ids are local folders", "projector, bases in the spec",
                                    "encoder and projector (v0.5+)"])
def test_ultravox_release_loads_with_its_base_models(tmp_path, ultravox, bases, audio, expected, layout) -> None:
    """Only the trained parts in the checkpoint; the frozen ones from the folders its ids (or the spec) name."""
    hub_ids = {"audio_model_id": "openai/whisper-large-v3-turbo", "text_model_id": "meta-llama/Llama-3.1-8B-Instruct"}
    if layout == "projector, ids are local folders":
        folder = fixie_folder(tmp_path / "ckpt", ultravox, prefixes=("multi_modal_projector.",),
                              config={"audio_model_id": str(bases["audio"]), "text_model_id": str(bases["llm"])})
        spec = f"ultravox:{folder}"
    elif layout == "projector, bases in the spec":
        folder = fixie_folder(tmp_path / "ckpt", ultravox, prefixes=("multi_modal_projector.",), config=hub_ids)
        spec = f"ultravox:{folder},audio={bases['audio']},llm={bases['llm']}"
    else:  # the Whisper LoRA merged: audio_model_id dropped, the encoder and its config stored
        config = {"audio_config": ultravox.model.config.audio_config.to_dict(), "audio_model_id": None,
                  "text_model_id": hub_ids["text_model_id"]}
        folder = fixie_folder(tmp_path / "ckpt", ultravox, prefixes=("multi_modal_projector.", "audio_tower."),
                              config=config)
        ultravox.tokenizer.save_pretrained(folder)
        ultravox.feature_extractor.save_pretrained(folder)
        spec = f"ultravox:{folder},llm={bases['llm']}"
    loaded = load(spec)
    assert isinstance(loaded, UltravoxSpeechLM) and loaded.name == spec
    assert torch.equal(logits(loaded, audio), expected)


def full_folder(folder: Path, ultravox: UltravoxSpeechLM, *, shards: int) -> Path:
    """Every key, both sub-configs in config.json, tokenizer and feature extractor beside them."""
    fixie_folder(folder, ultravox, prefixes=("audio_tower.", "multi_modal_projector.", "language_model."),
                 config=ultravox.model.config.to_dict(), shards=shards)
    ultravox.tokenizer.save_pretrained(folder)
    ultravox.feature_extractor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def full_ultravox(ultravox, tmp_path_factory) -> Path:
    return full_folder(tmp_path_factory.mktemp("full") / "ckpt", ultravox, shards=1)


def test_ultravox_with_every_key_in_one_file_loads_alone(full_ultravox, audio, expected) -> None:
    assert torch.equal(logits(load(f"ultravox:{full_ultravox}"), audio), expected)


def test_ultravox_with_every_key_in_shards_loads_alone(tmp_path, ultravox, audio, expected) -> None:
    folder = full_folder(tmp_path / "ckpt", ultravox, shards=2)
    assert not (folder / "model.safetensors").exists()
    assert torch.equal(logits(load(f"ultravox:{folder}"), audio), expected)


def test_ultravox_loads_in_bfloat16_through_a_device_map(full_ultravox, audio, expected) -> None:
    """device_map="auto" places everything on the CPU here; every weight, the LLM's and ours, is bfloat16."""
    loaded = load(f"ultravox:{full_ultravox}", dtype="bfloat16", device_map="auto")
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.bfloat16}
    assert torch.allclose(logits(loaded, audio), expected, atol=0.1)


def test_the_tiny_checkpoints_load_through_their_specs(tmp_path, ultravox, audio, expected) -> None:
    """scripts/reproduce_paper.py --dry-run rehearses on these folders: each loads through the spec a real run
    uses and computes what the tiny model in memory computes."""
    folders = save_tiny_checkpoints(tmp_path)
    loaded = load(f"ultravox:{folders['ultravox']},audio={folders['ultravox-audio']},llm={folders['llama']}")
    assert torch.equal(logits(loaded, audio), expected)
    assert torch.equal(logits(load(f"qwen2-audio:{folders['qwen2-audio']}"), audio[:1]),
                       logits(tiny_qwen2_audio(seed=0), audio[:1]))
    phi4mm = tiny_phi4mm(seed=0)
    add_tiny_speech_lora(phi4mm.model, seed=0)
    assert torch.equal(logits(load(f"phi4mm:{folders['phi4mm']}"), audio[:1]), logits(phi4mm, audio[:1]))
    for asr in ("whisper", "whisper-weak"):
        assert isinstance(load(f"cascade:asr={folders[asr]},llm={folders['llama']}"), Cascade)


def test_the_tiny_checkpoints_are_laid_out_as_the_releases(tmp_path) -> None:
    """fixie-ai's config names its frozen parts by hub id and holds neither sub-config, the bases sit in folders
    named by those ids; Qwen2-Audio's shards use the hub's (transformers 4.x) key names, not 5.x's module paths;
    Phi-4-MM has its speech LoRA as a peft adapter."""
    folders = save_tiny_checkpoints(tmp_path)
    config = json.loads((Path(folders["ultravox"]) / "config.json").read_text())
    assert not {"audio_config", "text_config"} & config.keys()
    assert (config["audio_model_id"], config["text_model_id"]) == (ULTRAVOX_AUDIO_ID, ULTRAVOX_TEXT_ID)
    assert (Path(folders["ultravox-audio"]), Path(folders["llama"])) == (tmp_path / ULTRAVOX_AUDIO_ID,
                                                                         tmp_path / ULTRAVOX_TEXT_ID)
    assert set(load_file(Path(folders["ultravox"]) / "model.safetensors")) == {
        f"multi_modal_projector.{key}" for key in tiny_ultravox(seed=0).model.multi_modal_projector.state_dict()}
    qwen2_audio = Path(folders["qwen2-audio"])
    index = json.loads((qwen2_audio / "model.safetensors.index.json").read_text())["weight_map"]
    assert not (qwen2_audio / "model.safetensors").exists() and len(set(index.values())) == 2
    assert {key.split(".")[0] for key in index} == {"language_model", "audio_tower", "multi_modal_projector"}
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in index
    assert "language_model.lm_head.weight" in index
    module_paths = set(tiny_qwen2_audio(seed=0).model.state_dict())
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in module_paths
    assert len(index) == len(module_paths) and not module_paths & index.keys()
    lora = Path(folders["phi4mm"]) / "speech-lora"
    adapter = json.loads((lora / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    keys = load_file(lora / "adapter_model.safetensors")
    assert keys and all(key.startswith("base_model.model.model.layers.") for key in keys)
    assert all(tensor.any() for tensor in keys.values())  # nonzero lora_B: the adapter does something


def test_a_checkpoint_tokenizer_is_read_without_the_weights(tmp_path, monkeypatch) -> None:
    """What erasure's text concept loads for a checkpoint's cache: the tokenizer the loaded model has (an
    Ultravox release without one takes its LLM base's), while no weight file is opened."""
    folders = save_tiny_checkpoints(tmp_path)
    specs = [f"ultravox:{folders['ultravox']},audio={folders['ultravox-audio']},llm={folders['llama']}",
             f"qwen2-audio:{folders['qwen2-audio']}", f"phi4mm:{folders['phi4mm']}"]
    text = "The quiet harbour opened early on Sunday."
    expected = [load(spec).tokenizer(text)["input_ids"] for spec in specs]
    assert not has_tokenizer(Path(folders["ultravox"]))  # fixie-ai's layout: the tokenizer is the base's

    def no_weights(*args, **kwargs):
        raise AssertionError("weights read")
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_weights))
    monkeypatch.setattr(checkpoint_folders, "safe_open", no_weights)
    for spec in specs[:2]:  # the patches bite: a load reads weights through them
        with pytest.raises(AssertionError, match="weights read"):
            load(spec)
    assert [load_checkpoint_tokenizer(spec)(text)["input_ids"] for spec in specs] == expected
    # erasure's text concept on a cache of that checkpoint (its header names the spec) reads it so
    cache = SimpleNamespace(header=SimpleNamespace(model_info={"spec": specs[1]}), model="qwen2-audio")
    assert _model_tokenizer(cache)(text)["input_ids"] == expected[1]
    # a named model's comes with the model; a model without one is refused in one line
    named = load_model("tiny-ultravox").tokenizer(text)["input_ids"]
    assert load_tokenizer("tiny-ultravox")(text)["input_ids"] == named
    monkeypatch.setattr(mini, "load_model", lambda name: SimpleNamespace())
    with pytest.raises(InterpError, match="model 'mini-whisper' has no tokenizer"):
        load_tokenizer("mini-whisper")
    with pytest.raises(InterpError, match="names no speech LLM checkpoint"):
        load_checkpoint_tokenizer(f"cascade:asr={folders['whisper']},llm={folders['llama']}")


def test_ultravox_refuses_a_checkpoint_key_it_does_not_use(tmp_path, ultravox, bases) -> None:
    folder = fixie_folder(tmp_path / "ckpt", ultravox, prefixes=("multi_modal_projector.",),
                          config={"audio_model_id": str(bases["audio"]), "text_model_id": str(bases["llm"])},
                          extra={"multi_modal_projector.linear_3.weight": torch.zeros(2, 2)})
    message = one_line_error(WeightsMissing, f"ultravox:{folder}")
    assert str(folder) in message and "multi_modal_projector.linear_3.weight" in message and "does not use" in message


def test_ultravox_without_its_base_models_says_how_to_pass_them(tmp_path, ultravox) -> None:
    folder = fixie_folder(tmp_path / "ckpt", ultravox, prefixes=("multi_modal_projector.",),
                          config={"audio_model_id": "openai/whisper-large-v3-turbo",
                                  "text_model_id": "meta-llama/Llama-3.1-8B-Instruct"})
    message = one_line_error(WeightsMissing, f"ultravox:{folder}")
    assert "meta-llama/Llama-3.1-8B-Instruct" in message and f"ultravox:{folder},audio=PATH,llm=PATH" in message


def test_ultravox_without_its_projector_names_the_missing_weights(tmp_path, ultravox, bases) -> None:
    folder = fixie_folder(tmp_path / "ckpt", ultravox, prefixes=("audio_tower.",),
                          config={"audio_model_id": str(bases["audio"]), "text_model_id": str(bases["llm"])})
    message = one_line_error(WeightsMissing, f"ultravox:{folder}")
    assert "multi_modal_projector.linear_1.weight" in message


# Cascades


@pytest.fixture(scope="module")
def cascade_folders(tmp_path_factory) -> tuple[Path, Path, WhisperCheckpointASR, TextLM]:
    root = tmp_path_factory.mktemp("cascade")
    whisper, processor = tiny_whisper()
    whisper.save_pretrained(root / "whisper")
    processor.save_pretrained(root / "whisper")
    llm = tiny_text_lm(seed=0)
    llm.model.save_pretrained(root / "llama")
    llm.tokenizer.save_pretrained(root / "llama")
    return root / "whisper", root / "llama", WhisperCheckpointASR(whisper, processor, name="w", source="memory"), llm


def test_cascade_loads_its_whisper_and_its_llm(cascade_folders, audio) -> None:
    asr_folder, llm_folder, asr, llm = cascade_folders
    spec = f"cascade:asr={asr_folder},llm={llm_folder}"
    loaded = load(spec)
    assert isinstance(loaded, Cascade) and loaded.name == spec
    transcript = loaded.transcribe(audio[0])
    assert transcript and transcript == asr.transcribe(audio[:1])[0]
    np.testing.assert_array_equal(loaded.llm.score_choices(transcript, PROMPT, CHOICES),
                                  llm.score_choices(transcript, PROMPT, CHOICES))


def test_a_transformers_checkpoint_with_a_key_its_model_does_not_use_is_refused(tmp_path, cascade_folders) -> None:
    asr_folder, llm_folder, _, _ = cascade_folders
    shutil.copytree(llm_folder, tmp_path / "llama")
    tensors = load_file(tmp_path / "llama" / "model.safetensors")
    save_file({**tensors, "model.layers.0.mlp.extra.weight": torch.zeros(2)}, tmp_path / "llama" / "model.safetensors",
              metadata={"format": "pt"})
    message = one_line_error(WeightsMissing, f"cascade:asr={asr_folder},llm={tmp_path / 'llama'}")
    assert str(tmp_path / "llama") in message and "model.layers.0.mlp.extra.weight" in message


def test_cascade_needs_both_parts(cascade_folders) -> None:
    asr_folder, _, _, _ = cascade_folders
    assert "asr=PATH,llm=PATH" in one_line_error(InterpError, f"cascade:asr={asr_folder}")
    assert "tts=" in one_line_error(InterpError, f"cascade:asr={asr_folder},tts=/x")


def test_the_cli_loads_a_checkpoint_quietly_and_loudly_at_debug(tmp_path, cascade_folders, audio) -> None:
    """A command that loads a model shows no bar or warning of the libraries (transformers' `Loading weights`,
    the GGUF conversion, deprecations); `--log-level DEBUG` gives them back (the positive control)."""
    asr_folder, llm_folder, _, _ = cascade_folders
    write_wav(tmp_path / "clip.wav", audio[0])
    ask = ("ask", "--model", f"cascade:asr={asr_folder},llm={llm_folder}", "--audio", tmp_path / "clip.wav",
           "--max-new-tokens", "2")
    quiet, loud = run_cli(*ask), run_cli("--log-level", "DEBUG", *ask)
    assert quiet.returncode == 0 == loud.returncode, quiet.stderr + loud.stderr
    for noise in ("Loading weights", "Converting and de-quantizing", "Warning", "[transformers]"):
        assert noise not in quiet.stderr, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout == loud.stdout
    assert "Loading weights" in loud.stderr


# Specs, folders and options


def test_an_unknown_kind_lists_the_kinds() -> None:
    message = one_line_error(InterpError, "llama:/models/llama")
    assert "'llama'" in message and "qwen2-audio:PATH" in message and "cascade:asr=PATH,llm=PATH" in message


def test_a_missing_folder_is_named(tmp_path) -> None:
    message = one_line_error(WeightsMissing, f"qwen2-audio:{tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in message and "does not exist" in message and "config.json" in message


def test_a_folder_without_config_or_weights_is_not_a_checkpoint(tmp_path) -> None:
    message = one_line_error(WeightsMissing, f"phi4mm:{tmp_path}")
    assert str(tmp_path) in message and "no config.json" in message
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert "safetensors only" in one_line_error(WeightsMissing, f"phi4mm:{tmp_path}")


def test_a_checkpoint_of_another_kind_is_refused(cascade_folders) -> None:
    _, llm_folder, _, _ = cascade_folders
    message = one_line_error(InterpError, f"qwen2-audio:{llm_folder}")
    assert "'llama'" in message and "'qwen2_audio'" in message


def test_options_are_checked() -> None:
    with pytest.raises(InterpError, match="float64"):
        LoadOptions(dtype="float64")
    with pytest.raises(InterpError, match="not a torch device"):
        LoadOptions(device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InterpError, match="no CUDA GPU"):
            load("qwen2-audio:/anywhere", device="cuda")


def test_load_model_hands_paths_to_load_checkpoint() -> None:
    with pytest.raises(InterpError, match="qwen2-audio:PATH"):
        load_model("nope:/x")
    with pytest.raises(WeightsMissing, match="does not exist"):
        load_model("phi4mm:/nowhere", options=LoadOptions(dtype="bfloat16"))
    assert isinstance(load_model("tiny-llama", options=LoadOptions()), TextLM)


def test_load_model_moves_a_named_model_to_the_device() -> None:
    """The meta device stands in for a GPU: every module the adapter holds must have moved."""
    moved = load_model("tiny-ultravox", options=LoadOptions(device="meta"))
    assert {parameter.device.type for parameter in moved.model.parameters()} == {"meta"}
