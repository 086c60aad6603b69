"""interp.serve (OpenAI-compatible server) and EndpointSystem, against each other and against the served model."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from interp.behavior import run_system
from interp.data.manifest import SpokenSet
from interp.errors import InterpError
from interp.models.endpoint import EndpointSystem, wav_base64
from interp.models.prompting import PlainPrompt
from interp.serve import make_server
from interp.task_prompts import task_prompt
from tests.helpers import run_cli
from tests.test_behavior import make_set, sentiment_records

_SECRET = "sk-test-Zq8v3Kp1-never-write-me"


class Fingerprint:
    """A speech system whose reply describes exactly what reached it: audio hash, prompt, prompt kind."""

    name = "fingerprint"

    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        digest = hashlib.sha256(np.asarray(audio, dtype=np.float32).tobytes()).hexdigest()[:16]
        return json.dumps({"audio": digest, "n": int(audio.size), "prompt": str(prompt),
                           "plain": isinstance(prompt, PlainPrompt), "max": max_new_tokens})


class Answering:
    """Says 'positive' for long clips and 'Negative.' for short ones (a forced choice through generation)."""

    name = "answering"

    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        return "positive\n\nReview: more" if audio.size > 6600 else " Negative."


def _start(system, **kwargs):
    server = make_server(system, "127.0.0.1", 0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture()
def served():
    servers = []

    def start(system, **kwargs):
        server, url = _start(system, **kwargs)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _audio(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    samples = np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1
    return (np.round(samples * 32768) / 32768).astype(np.float32)


def test_audio_and_prompt_cross_the_wire_unchanged(served) -> None:
    url = served(Fingerprint())
    audio, local = _audio(), Fingerprint()
    for raw in (True, False):
        endpoint = EndpointSystem(url, "fingerprint", raw_prompts=raw)
        for prompt in (task_prompt("sentiment").prompt, "Repeat exactly what you heard: <|audio|>",
                       PlainPrompt("<|audio|>"), "before <|audio|> after"):
            reply = json.loads(endpoint.generate(audio, prompt, max_new_tokens=7))
            expected = json.loads(local.generate(audio, prompt, max_new_tokens=7))
            expected["plain"] = expected["plain"] and raw  # without raw_prompts the server applies the template
            assert reply == expected


def test_tiny_model_served_in_a_thread_answers_as_itself(served) -> None:
    import torch

    from interp.models.tiny import tiny_ultravox

    model = tiny_ultravox(seed=3)
    # a random tiny LM only ever writes newlines (stripped to ''); an untied random head makes it write text
    language_model = model.model.language_model
    head = torch.nn.Linear(language_model.lm_head.in_features, language_model.lm_head.out_features, bias=False)
    with torch.no_grad():
        head.weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(1))
    language_model.lm_head = head
    url = served(model)
    endpoint = EndpointSystem(url, "tiny-ultravox", raw_prompts=True)
    for seed, prompt in enumerate((task_prompt("sentiment").prompt, "what did you hear ? <|audio|>")):
        audio = _audio(0.6, seed)
        reply = endpoint.generate(audio, prompt, max_new_tokens=12)
        assert reply and reply == model.generate(audio, prompt, max_new_tokens=12)


def test_protocol_routes_and_errors(served) -> None:
    url = served(Fingerprint(), model_name="fp")
    with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
        listing = json.loads(response.read())
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["fp"]
    audio_part = {"type": "input_audio", "input_audio": {"data": wav_base64(_audio()), "format": "wav"}}
    ok = {"model": "fp", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi "}, audio_part]}],
          "max_completion_tokens": 5}
    status, reply = _post(f"{url}/chat/completions", ok)
    assert status == 200 and reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["role"] == "assistant" and reply["choices"][0]["finish_reason"] == "stop"
    assert json.loads(reply["choices"][0]["message"]["content"])["prompt"] == "hi <|audio|>"
    bad = [
        ({**ok, "model": "other"}, 404, "not found"),
        ({**ok, "messages": [{"role": "user", "content": "no audio"}]}, 400, "input_audio"),
        ({**ok, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, 400, "no input_audio"),
        ({**ok, "messages": [{"role": "system", "content": "be nice"}, ok["messages"][0]]}, 400, "exactly one"),
        ({**ok, "messages": [{"role": "user", "content": [audio_part, audio_part]}]}, 400, "exactly one input_audio"),
        ({**ok, "stream": True}, 400, "streaming"),
        ({**ok, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": "bm90IGF1ZGlv", "format": "wav"}}]}]}, 400, "not a readable wav"),
        ({**ok, "messages": [{"role": "user", "content": [{**audio_part, "input_audio": {
            "data": "x", "format": "mp3"}}]}]}, 400, "mp3"),
    ]
    for body, code, message in bad:
        status, reply = _post(f"{url}/chat/completions", body)
        assert status == code and message in reply["error"]["message"], (body, reply)
    assert _post(f"{url}/nothing", ok)[0] == 404


def _ok_body(model: str = "fingerprint") -> dict:
    audio_part = {"type": "input_audio", "input_audio": {"data": wav_base64(_audio()), "format": "wav"}}
    return {"model": model, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi "}, audio_part]}],
            "max_completion_tokens": 5}


def _raw_request(url: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the server and read until it closes the connection (a bounded wait)."""
    port = int(url.split(":")[-1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status_and_payload(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(("length_header", "status", "message"), [
    (b"Content-Length: abc\r\n", 400, "Content-Length must be a non-negative whole number of bytes, got 'abc'"),
    (b"Content-Length: -1\r\n", 400, "got '-1'"),
    (b"Content-Length: 1_0\r\n", 400, "got '1_0'"),
    (b"", 411, "send a Content-Length header"),
    (b"Content-Length: 67108865\r\n", 413, "request body over 67108864 bytes"),
])
def test_a_content_length_that_cannot_be_trusted_is_answered_and_the_server_keeps_serving(
        served, caplog, length_header: bytes, status: int, message: str) -> None:
    """A bad Content-Length gets a JSON error in the server's format and a closed connection (no hang, no
    traceback in the log), and the next request is answered as before."""
    url = served(Fingerprint(), read_timeout=0.5)
    with caplog.at_level(logging.INFO, logger="interp.serve"):
        response = _raw_request(url, _HEAD + length_header + b"\r\n")
    code, payload = _status_and_payload(response)
    assert code == status and message in payload["error"]["message"], payload
    assert payload["error"]["type"] == "invalid_request_error" and b"Connection: close" in response
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _post(f"{url}/chat/completions", _ok_body())[0] == 200


def test_a_client_that_stops_sending_its_body_gets_408_and_frees_its_thread(served) -> None:
    """A body that stops arriving is answered 408 after read_timeout; meanwhile, and after, others are served."""
    url = served(Fingerprint(), read_timeout=0.5)
    port = int(url.split(":")[-1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as stalled:
        stalled.sendall(_HEAD + b"Content-Length: 100\r\n\r\n{\"model\": ")
        assert _post(f"{url}/chat/completions", _ok_body())[0] == 200  # served while the other one waits
        start = time.monotonic()
        chunks = []
        while chunk := stalled.recv(65536):
            chunks.append(chunk)
        waited = time.monotonic() - start
    code, payload = _status_and_payload(b"".join(chunks))
    assert code == 408 and "stopped arriving for 0.5 s" in payload["error"]["message"]
    assert waited < 3.0
    assert _post(f"{url}/chat/completions", _ok_body())[0] == 200


def test_a_client_that_closes_mid_body_is_let_go_and_the_server_keeps_serving(served, caplog) -> None:
    """A body cut short by the client closing its side gets no reply (nobody reads it) and no traceback."""
    url = served(Fingerprint(), read_timeout=0.5)
    port = int(url.split(":")[-1].split("/")[0])
    with caplog.at_level(logging.INFO, logger="interp.serve"):
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
            sock.sendall(_HEAD + b"Content-Length: 100\r\n\r\n{\"model\": ")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(65536) == b""
        time.sleep(0.2)  # the server logs after it closes
    assert any("10 bytes into a 100-byte body" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _post(f"{url}/chat/completions", _ok_body())[0] == 200


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
                         ids=["nothing", "half-the-headers"])
def test_a_client_silent_before_its_body_is_dropped_after_the_read_timeout(served, sent: bytes) -> None:
    """Silent before the request is complete (no status line can be trusted yet): the connection is closed after
    read_timeout without a reply, and the server keeps serving."""
    url = served(Fingerprint(), read_timeout=0.5)
    start = time.monotonic()
    assert _raw_request(url, sent) == b""
    assert time.monotonic() - start < 3.0
    assert _post(f"{url}/chat/completions", _ok_body())[0] == 200


def test_api_key_is_sent_and_never_written(served, tmp_path: Path, monkeypatch) -> None:
    url = served(Answering(), api_key=_SECRET)
    spoken = make_set(tmp_path / "sent", sentiment_records(6))
    monkeypatch.delenv("INTERP_TEST_KEY", raising=False)
    with pytest.raises(InterpError, match=r"HTTP 401.*INTERP_TEST_KEY") as refused:
        EndpointSystem(url, "answering", api_key_env="INTERP_TEST_KEY").generate(_audio(), "<|audio|>")
    assert _SECRET not in str(refused.value)
    monkeypatch.setenv("INTERP_TEST_KEY", _SECRET)
    result = run_cli("behave", "--systems", f"endpoint:{url},model=answering,key_env=INTERP_TEST_KEY",
                     "--data", spoken.root, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert _SECRET not in result.stdout + result.stderr
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"sent.jsonl", "sent.json", "run.json"}
    for path in files:
        assert _SECRET not in path.read_text(encoding="utf-8"), path
    lines = [json.loads(line) for line in (tmp_path / "run" / "endpoint-answering" / "sent.jsonl").read_text()
             .splitlines()]
    sizes = [spoken.load_audio(item).size for item in spoken.items]
    assert [line["prediction"] for line in lines] == [1 if size > 6600 else 0 for size in sizes]
    assert all(line["scores"] is None and line["calibration"] == "none" for line in lines)
    sidecar = json.loads((tmp_path / "run" / "endpoint-answering" / "sent.json").read_text())
    assert sidecar["config"]["system"]["endpoint"]["api_key_env"] == "INTERP_TEST_KEY"
    assert sidecar["config"]["rules"]["forced_choice"] == "generate+parse"


def test_unreachable_endpoint_is_one_error(tmp_path: Path) -> None:
    server, url = _start(Fingerprint())
    server.server_close()  # bound then closed: nothing listens there
    with pytest.raises(InterpError, match="cannot reach"):
        EndpointSystem(url, "fingerprint", timeout=5).generate(_audio(), "<|audio|>")
    spoken = make_set(tmp_path / "sent", sentiment_records(1))
    with pytest.raises(InterpError, match="cannot reach"):
        run_system(EndpointSystem(url, "fingerprint", timeout=5), spoken, tmp_path / "run", system_name="x")


def test_serving_a_text_model_is_refused() -> None:
    from interp.models.cascade import Oracle
    from interp.models.tiny import tiny_text_lm

    with pytest.raises(InterpError, match="does not hear audio"):
        make_server(Oracle(tiny_text_lm()), "127.0.0.1", 0)


@pytest.mark.slow
def test_mini_cascade_behind_the_chat_protocol(sentiment_set: Path) -> None:
    """`interp serve --model mini-cascade` in a subprocess answers as mini-cascade does in this process."""
    from interp.models.mini import load_model

    process = subprocess.Popen([sys.executable, "-m", "interp", "serve", "--model", "mini-cascade", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cascade = load_model("mini-cascade")
        line = process.stdout.readline()
        assert line.startswith("serving mini-cascade at http://127.0.0.1:"), (line, process.stderr.read())
        url = line.split(" at ")[1].split()[0]
        endpoint = EndpointSystem(url, "mini-cascade", raw_prompts=True)
        spoken = SpokenSet.open(sentiment_set)
        prompt = task_prompt("sentiment")
        for item in spoken.items[:2]:  # the few-shot prompt, sent raw (as the harness gives it)
            audio = spoken.load_audio(item)
            served = endpoint.generate(audio, prompt.prompt, max_new_tokens=8)
            assert served and served == cascade.generate(audio, prompt.prompt, max_new_tokens=8)
        chat = "Repeat exactly what you heard: <|audio|>"  # a chat prompt: the served model applies its template
        audio = spoken.load_audio(spoken.items[2])
        assert endpoint.generate(audio, chat, max_new_tokens=8) == cascade.generate(audio, chat, max_new_tokens=8)
    finally:
        process.terminate()
        process.wait(timeout=30)
