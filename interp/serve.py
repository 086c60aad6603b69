"""A minimal OpenAI-compatible HTTP server in front of one speech system (stdlib http.server only).

Routes: `GET /v1/models` (the one model) and `POST /v1/chat/completions`. A request carries exactly one user
message whose content parts are text and one `input_audio` part (base64 wav or flac, any rate: mixed to mono
and resampled to 16 kHz); the prompt is the text parts in order with the audio placeholder where the audio part
was, and the reply is `system.generate(audio, prompt, max_new_tokens=max_tokens)` (greedy, whatever
`temperature` says). An extension field `"raw_prompt": true` gives the prompt to the model as written
(PlainPrompt: no chat template), so an `EndpointSystem` (interp.models.endpoint) with raw_prompts=True
reproduces the harness's few-shot prompts exactly. Not supported (answered 400): streaming, n > 1, system or
earlier turns, tools. Requests are served one at a time per model (a lock around the model); the server answers
/v1/models while a generation runs. With an API key set, every request needs `Authorization: Bearer <key>`.

Malformed requests get an error, never a hung or crashed thread: a Content-Length that is missing, not a
decimal number (`abc`, `-1`) or over the body limit is answered 411, 400 or 413 and the connection closed
(where its body ends is unknown); a client that stops sending for `read_timeout` seconds is answered 408 (or,
in its headers, dropped), so it cannot hold a thread forever.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from interp.data.audio import SAMPLE_RATE, resample
from interp.errors import InterpError
from interp.models.base import AUDIO_PLACEHOLDER, SpeechLM
from interp.models.cascade import Cascade, Oracle
from interp.models.endpoint import EndpointSystem
from interp.models.prompting import PlainPrompt
from interp.models.text_lm import TextLM

__all__ = ["Servable", "serve", "make_server", "decode_audio", "prompt_from_messages", "RequestError"]

_log = logging.getLogger(__name__)
_MAX_BODY = 64 * 1024 * 1024
_DEFAULT_MAX_TOKENS = 64
_READ_TIMEOUT = 10.0
"""Seconds a connection may stay silent (per socket read or write, so a large body that keeps arriving is
never cut off); it also ends an idle keep-alive connection, whose client reconnects."""


class RequestError(Exception):
    """A request the server refuses: HTTP status and an OpenAI-style error message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def decode_audio(data: str, audio_format: str) -> np.ndarray:
    """(samples,) float32 16 kHz mono from a base64 wav/flac; RequestError for anything else."""
    import soundfile as sf

    if audio_format not in ("wav", "flac"):
        raise RequestError(400, f"input_audio format {audio_format!r} is not supported; send wav (or flac)")
    try:
        raw = base64.b64decode(data, validate=True)
        samples, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception as error:  # noqa: BLE001 - any undecodable payload is the client's mistake
        raise RequestError(400, f"input_audio is not a readable {audio_format} file ({type(error).__name__})") from None
    mono = samples.mean(axis=1).astype(np.float32)
    if mono.size == 0:
        raise RequestError(400, "input_audio holds no samples")
    return resample(mono, from_rate=rate, to_rate=SAMPLE_RATE)


def prompt_from_messages(messages: Any) -> tuple[str, np.ndarray]:
    """(prompt with the audio placeholder where the audio part was, audio) from a chat `messages` list."""
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        raise RequestError(400, "send exactly one message (role user); system messages and earlier turns are not "
                           "supported by this server")
    message = messages[0]
    if message.get("role") != "user":
        raise RequestError(400, f"the message's role must be 'user', got {message.get('role')!r}")
    content = message.get("content")
    if not isinstance(content, list):
        raise RequestError(400, "the message content must be a list of parts with one input_audio part")
    pieces: list[str] = []
    audio = None
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, "a text part needs a string 'text'")
            if AUDIO_PLACEHOLDER in text:
                raise RequestError(400, f"text parts may not contain {AUDIO_PLACEHOLDER!r}; send the audio as an "
                                   "input_audio part")
            pieces.append(text)
        elif kind == "input_audio":
            if audio is not None:
                raise RequestError(400, "send exactly one input_audio part")
            payload = part.get("input_audio") or {}
            if not isinstance(payload.get("data"), str):
                raise RequestError(400, "input_audio needs base64 'data'")
            audio = decode_audio(payload["data"], str(payload.get("format", "wav")))
            pieces.append(AUDIO_PLACEHOLDER)
        else:
            raise RequestError(400, f"unsupported content part type {kind!r}; use text and input_audio")
    if audio is None:
        raise RequestError(400, "the message has no input_audio part; this server answers about audio")
    return "".join(pieces), audio


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens", _DEFAULT_MAX_TOKENS))
    if value is None:
        value = _DEFAULT_MAX_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(400, f"max_tokens must be a positive integer, got {value!r}")
    return value


Servable = SpeechLM | Cascade | EndpointSystem
"""What `interp serve` can put behind the endpoint: a system that hears audio and generates."""


def make_server(system: Servable, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None,
                api_key: str | None = None, read_timeout: float = _READ_TIMEOUT) -> ThreadingHTTPServer:
    """A bound server (port 0 picks a free one: read `server.server_address`); call serve_forever() on it.

    read_timeout: seconds a client may stay silent mid-request before it is answered 408 or dropped.
    """
    if not hasattr(system, "generate"):
        raise InterpError(f"{type(system).__name__} cannot generate; serve a speech LLM or a cascade")
    if isinstance(system, (Oracle, TextLM)):
        raise InterpError("a text LLM (or the oracle) does not hear audio; serve a speech LLM or a cascade")
    name = model_name or getattr(system, "name", "model")
    lock = threading.Lock()
    created = int(time.time())

    def complete(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("model") not in (None, name):
            raise RequestError(404, f"model {body.get('model')!r} not found; this server has {name!r}",
                               "model_not_found")
        if body.get("stream"):
            raise RequestError(400, "streaming is not supported")
        if body.get("n", 1) != 1:
            raise RequestError(400, "only n = 1 is supported")
        if body.get("tools"):
            raise RequestError(400, "tools are not supported")
        prompt, audio = prompt_from_messages(body.get("messages"))
        if body.get("raw_prompt"):
            prompt = PlainPrompt(prompt)
        max_tokens = _max_tokens(body)
        with lock:
            try:
                text = system.generate(audio, prompt, max_new_tokens=max_tokens)
            except InterpError as error:
                raise RequestError(400, str(error)) from None
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": name, "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": "stop"}]}

    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "interp"}]}

    handler = _handler(complete, models, api_key, read_timeout)
    try:
        return _Server((host, port), handler)
    except OSError as error:
        raise InterpError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer whose unexpected errors go to the log: socketserver prints them to stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.exception("request from %s failed", client_address)


def _body_length(value: str | None) -> int:
    """The body's byte count from a Content-Length header; RequestError where it cannot be trusted.

    int() alone would take '-1' (then read() waits for the client to close), '+5' or '1_000'; only plain
    decimal digits are a length.
    """
    if value is None:
        raise RequestError(411, "send a Content-Length header (chunked request bodies are not supported)")
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        raise RequestError(400, f"Content-Length must be a non-negative whole number of bytes, got {value!r}")
    length = int(value)
    if length > _MAX_BODY:
        raise RequestError(413, f"request body over {_MAX_BODY} bytes")
    return length


@dataclass(frozen=True)
class _Api:
    """What the routes answer with: a chat completion, the model list, and the key requests must carry."""

    complete: Callable[[dict[str, Any]], dict[str, Any]]
    models: Callable[[], dict[str, Any]]
    api_key: str | None


class _Handler(BaseHTTPRequestHandler):
    """The routes, answering through `api`; `_handler` makes the subclass that sets `api` and `timeout`."""

    protocol_version = "HTTP/1.1"
    server_version = "interp-serve"
    # StreamRequestHandler puts this on the socket; a silent client then raises TimeoutError, which
    # handle_one_request turns into a dropped connection (in the request line or headers) and do_POST
    # into a 408 (in the body).
    timeout: float = _READ_TIMEOUT
    api: _Api

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        _log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:  # tell the client, so it does not send its next request here
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: RequestError) -> None:
        self._send(error.status, {"error": {"message": str(error), "type": error.kind, "param": None,
                                            "code": None}})

    def _authorised(self) -> bool:
        if not self.api.api_key:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.api.api_key}".encode()):
            return True
        self._error(RequestError(401, "missing or wrong API key (Authorization: Bearer ...)",
                                 "authentication_error"))
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._authorised():
            return
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, self.api.models())
        else:
            self._error(RequestError(404, f"no route GET {self.path}; try GET /v1/models", "not_found"))

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering (or dropping) a request whose body cannot be read.

        Each refusal closes the connection: the unread rest of the body would be parsed as a request.
        """
        try:
            length = _body_length(self.headers.get("Content-Length"))
            raw = self.rfile.read(length)
        except RequestError as error:
            self.close_connection = True
            self._error(error)
            return None
        except TimeoutError:
            self.close_connection = True
            self._error(RequestError(408, f"the request body stopped arriving for {self.timeout:g} s"))
            return None
        if len(raw) < length:  # the client closed its side mid-body: nobody is left to answer
            _log.info("%s closed the connection %d bytes into a %d-byte body", self.address_string(),
                      len(raw), length)
            self.close_connection = True
            return None
        return raw

    def do_POST(self) -> None:  # noqa: N802
        raw = self._read_body()
        if raw is None:
            return
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(RequestError(404, f"no route POST {self.path}; try POST /v1/chat/completions",
                                     "not_found"))
            return
        try:
            body = json.loads(raw.decode("utf-8"))
            if not isinstance(body, dict):
                raise RequestError(400, "the request body must be a JSON object")
            self._send(200, self.api.complete(body))
        except json.JSONDecodeError as error:
            self._error(RequestError(400, f"the request body is not JSON ({error.msg})"))
        except UnicodeDecodeError:
            self._error(RequestError(400, "the request body is not UTF-8"))
        except RequestError as error:
            self._error(error)
        except Exception as error:  # noqa: BLE001 - a bug in the model: answer 500, keep serving
            _log.exception("generation failed")
            self._error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(error).__name__}",
                                     "server_error"))


def _handler(complete: Callable[[dict[str, Any]], dict[str, Any]], models: Callable[[], dict[str, Any]],
             api_key: str | None, read_timeout: float) -> type[BaseHTTPRequestHandler]:
    """The request handler class of one server (http.server builds one instance per request)."""
    return type("Handler", (_Handler,), {"api": _Api(complete, models, api_key), "timeout": read_timeout})


def serve(system: Servable, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None,
          api_key: str | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `system` until interrupted. on_ready(base_url) is called once the port is bound."""
    server = make_server(system, host, port, model_name=model_name, api_key=api_key)
    bound_host, bound_port = server.server_address[:2]
    if on_ready is not None:
        on_ready(f"http://{bound_host}:{bound_port}/v1")
    try:
        server.serve_forever()
    finally:
        server.server_close()
