"""A speech system behind an OpenAI-compatible chat endpoint, and the wav encoding it sends.

The client of `interp serve` (interp.serve) and of other services: the harness runs it like any other system,
by generation only (an endpoint gives no log-likelihoods).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from interp.errors import InterpError
from interp.models.prompting import PlainPrompt, split_prompt

__all__ = ["EndpointSystem", "wav_base64"]

_log = logging.getLogger(__name__)


def wav_base64(audio: np.ndarray, sample_rate: int = 16_000) -> str:
    """Base64 of a 16-bit PCM mono wav of (samples,) float audio in [-1, 1].

    Samples are rounded to k / 32768 (the scale soundfile reads PCM_16 with), so audio read from a 16-bit wav
    travels without change.
    """
    import soundfile as sf

    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, subtype="PCM_16", format="WAV")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class EndpointSystem:
    """A speech model behind an OpenAI-compatible `/chat/completions` endpoint.

    The prompt's text before and after the audio placeholder become text parts around one `input_audio` part
    (base64 16-bit PCM wav, format "wav") of a single user message; decoding is greedy (temperature 0).
    The API key is read from the environment variable `api_key_env` at each request (none sent when it is
    unset) and never logged or written. raw_prompts=True sends `"raw_prompt": true` with PlainPrompt prompts,
    an extension `interp serve` understands (the model then reads the prompt as written, without its chat
    template); leave it off for other services, which may refuse unknown fields. There are no log-likelihoods,
    so forced-choice items are answered by generation + parse_choice.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 raw_prompts: bool = False, name: str | None = None, retries: int = 2) -> None:
        if not re.match(r"^https?://", base_url):
            raise InterpError(f"endpoint URL {base_url!r} must start with http:// or https:// (e.g. "
                              "http://127.0.0.1:8000/v1)")
        if not model:
            raise InterpError("an endpoint needs model=NAME")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.raw_prompts = raw_prompts
        self.retries = retries
        self.name = name or f"endpoint-{model}"

    @staticmethod
    def spec_fields(spec: str) -> dict[str, str]:
        """The fields of `endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1][,name=N]`."""
        body = spec[len("endpoint:"):] if spec.startswith("endpoint:") else spec
        url, *rest = body.split(",")
        fields = {"url": url.strip()}
        known = {"model", "key_env", "timeout", "raw_prompts", "name"}
        for entry in rest:
            key, eq, value = entry.partition("=")
            if not eq or key.strip() not in known:
                raise InterpError(f"endpoint spec {spec!r}: unknown field {entry!r}; write "
                                  "endpoint:URL,model=NAME[,key_env=VAR][,timeout=S][,raw_prompts=1]")
            fields[key.strip()] = value.strip()
        if "model" not in fields or not fields["url"]:
            raise InterpError(f"endpoint spec {spec!r} needs a URL and model=NAME, e.g. "
                              "endpoint:http://127.0.0.1:8000/v1,model=mini-cascade")
        return fields

    @classmethod
    def from_spec(cls, spec: str, *, name: str | None = None) -> EndpointSystem:
        fields = cls.spec_fields(spec)
        try:
            timeout = float(fields.get("timeout", 120))
        except ValueError:
            raise InterpError(f"endpoint spec {spec!r}: timeout must be seconds") from None
        return cls(fields["url"], fields["model"], api_key_env=fields.get("key_env", "OPENAI_API_KEY"),
                   timeout=timeout, raw_prompts=fields.get("raw_prompts", "0").lower() in ("1", "true", "yes"),
                   name=name or fields.get("name"))

    def config(self) -> dict[str, Any]:
        """What the sidecar records: URL, model, the NAME of the key variable (never its value), options."""
        return {"url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                "timeout": self.timeout, "raw_prompts": self.raw_prompts}

    def request_body(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int) -> dict[str, Any]:
        """The chat-completions request for one (audio, prompt)."""
        before, after = split_prompt(prompt)
        parts: list[dict[str, Any]] = []
        if before:
            parts.append({"type": "text", "text": before})
        parts.append({"type": "input_audio", "input_audio": {"data": wav_base64(audio), "format": "wav"}})
        if after:
            parts.append({"type": "text", "text": after})
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": parts}],
                                "max_tokens": max_new_tokens, "temperature": 0}
        if self.raw_prompts and isinstance(prompt, PlainPrompt):
            body["raw_prompt"] = True
        return body

    def generate(self, audio: np.ndarray, prompt: str, *, max_new_tokens: int = 32) -> str:
        """The endpoint's reply (message content) to the prompt with the audio in its placeholder."""
        reply = self._post("/chat/completions", self.request_body(audio, prompt, max_new_tokens=max_new_tokens))
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InterpError(f"{self.base_url}: the reply is not a chat completion (no choices[0].message)") from None
        return (content or "").strip()

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.base_url + route
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as error:
                message = _redact(_error_message(error), key)
                if error.code in (429, 500, 502, 503, 504) and attempt < self.retries:
                    _log.warning("%s answered %d (%s); retrying", url, error.code, message)
                    time.sleep(2.0 ** attempt)
                    continue
                hint = f" (is ${self.api_key_env} set?)" if error.code in (401, 403) else ""
                raise InterpError(f"{url} answered HTTP {error.code}: {message}{hint}") from None
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise InterpError(f"cannot reach {url}: {_redact(str(reason), key)}") from None
            except json.JSONDecodeError:
                raise InterpError(f"{url} did not answer with JSON") from None
        raise AssertionError("unreachable")


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(error.read().decode("utf-8"))
        return str(payload.get("error", {}).get("message") or payload)
    except Exception:  # noqa: BLE001 - any unreadable error body
        return str(error.reason)


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text
