"""The `openai` model: any OpenAI-compatible chat-completions endpoint, over stdlib HTTP.

One `decide` is one POST to `{base_url}/chat/completions`: a system message (the configured
system prompt, then the request's composed system text), a user message (`sender: text`), and
one function tool per action the agent may select. The reply is the message content; each
function tool call is an action, its JSON arguments the parameters.

The blocking HTTP call runs in a worker thread with a socket timeout of `timeout_s` per
attempt. Timeouts, connection errors, HTTP 429 and 5xx are retried up to `max_retries` times
with exponential backoff; other failures (other 4xx, a response that is not the expected JSON)
are a ModelError at once.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import JsonValue

from agent_worker.models.base import ActionCall, ModelDecision, ModelError, ModelRequest
from protocol import ActionInfo, OpenAIModelConfig

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 2.0
RETRY_AFTER_MAX_S = 5.0
"""A numeric Retry-After on a 429 is honoured up to this many seconds."""
_EXCERPT = 200


def _excerpt(text: str, limit: int = _EXCERPT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    retry_after: float | None


class _Retryable(Exception):
    """One failed attempt that may be retried; the message is the cause."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """A numeric Retry-After (seconds); None when absent, an HTTP date, or nonsense."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _tool(action: ActionInfo) -> JsonValue:
    parameters: JsonValue = (
        action.parameters if action.parameters is not None else {"type": "object", "properties": {}}
    )
    return {
        "type": "function",
        "function": {
            "name": action.name,
            "description": action.description,
            "parameters": parameters,
        },
    }


class OpenAIModel:
    def __init__(
        self,
        config: OpenAIModelConfig,
        environ: Mapping[str, str] = os.environ,
        *,
        backoff_s: float = BACKOFF_START_S,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        """Sent as the request's `seed`, which OpenAI-compatible servers use to make sampling
        repeatable (best effort on their side)."""
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelError(f"openai model: base_url {config.base_url!r} is not an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        try:
            self._port = parts.port
        except ValueError as exc:
            raise ModelError(f"openai model: base_url {config.base_url!r}: {exc}") from None
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._api_key: str | None = None
        if config.api_key_env is not None:
            key = environ.get(config.api_key_env, "")
            if not key:
                raise ModelError(
                    f"openai model: environment variable {config.api_key_env} "
                    "(api_key_env) is not set or empty"
                )
            self._api_key = key
        self._backoff_s = backoff_s
        self.calls = 0
        """decide() calls."""
        self.http_attempts = 0
        """HTTP requests attempted (retries included)."""

    # --- the request ---------------------------------------------------------------------

    def _body(self, request: ModelRequest) -> bytes:
        config = self.config
        system = request.system
        if config.system_prompt:
            system = f"{config.system_prompt}\n\n{system}"
        payload: dict[str, JsonValue] = {
            "model": config.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"{request.message.sender}: {request.message.text}"},
            ],
        }
        if request.actions:
            payload["tools"] = [_tool(a) for a in request.actions]
        if config.temperature is not None:
            payload["temperature"] = config.temperature
        if self.seed is not None:
            payload["seed"] = self.seed
        return json.dumps(payload).encode()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _post_once(self, body: bytes) -> _Response:
        """One blocking attempt (runs in a worker thread). Raises _Retryable for a timeout or a
        connection error; returns any HTTP response, whatever its status."""
        timeout = self.config.timeout_s
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers())
            response = conn.getresponse()
            data = response.read()
            return _Response(response.status, data, _retry_after(response.getheader("Retry-After")))
        except TimeoutError:
            raise _Retryable(f"timed out after {timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    async def _post(self, body: bytes) -> bytes:
        """The body of a 2xx response, after retries; ModelError otherwise."""
        attempts = self.config.max_retries + 1
        delay = self._backoff_s
        for attempt in range(1, attempts + 1):
            self.http_attempts += 1
            try:
                response = await asyncio.to_thread(self._post_once, body)
                if 200 <= response.status < 300:
                    return response.body
                detail = _excerpt(response.body.decode(errors="replace"))
                cause = f"HTTP {response.status}: {detail}"
                if response.status != 429 and response.status < 500:
                    raise ModelError(
                        f"openai model: POST {self.url} failed (not retried) after {attempt} "
                        f"attempt(s): {cause}"
                    )
                raise _Retryable(cause, response.retry_after if response.status == 429 else None)
            except _Retryable as exc:
                if attempt == attempts:
                    raise ModelError(
                        f"openai model: POST {self.url} failed after {attempt} attempt(s): {exc}"
                    ) from None
                wait = delay
                if exc.retry_after is not None:
                    wait = max(wait, min(exc.retry_after, RETRY_AFTER_MAX_S))
                await asyncio.sleep(wait)  # retry backoff before the next attempt
                delay = min(delay * 2, BACKOFF_MAX_S)
        raise AssertionError("unreachable")  # the loop returns or raises

    # --- the response --------------------------------------------------------------------

    def _fail(self, what: str) -> ModelError:
        return ModelError(f"openai model: POST {self.url}: {what}")

    def _decision(self, data: bytes) -> ModelDecision:
        text = data.decode(errors="replace")
        try:
            parsed: object = json.loads(text)
        except ValueError:
            raise self._fail(f"response is not JSON: {_excerpt(text)}") from None
        if not isinstance(parsed, dict):
            raise self._fail(f"response is not a JSON object: {_excerpt(text)}")
        choices = parsed.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._fail(f"response has no choices: {_excerpt(text)}")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise self._fail(f"choices[0] has no message: {_excerpt(text)}")
        return ModelDecision(reply=self._reply(message), actions=self._actions(message))

    def _reply(self, message: dict[str, object]) -> str | None:
        content = message.get("content")
        if content is None:
            return None
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [p.get("text") if isinstance(p, dict) else None for p in content]
            content = "".join(t for t in texts if isinstance(t, str))
        if not isinstance(content, str):
            raise self._fail(f"message content is not a string: {_excerpt(repr(content))}")
        return content or None

    def _actions(self, message: dict[str, object]) -> list[ActionCall]:
        tool_calls = message.get("tool_calls")
        if tool_calls is None:
            return []
        if not isinstance(tool_calls, list):
            raise self._fail(f"tool_calls is not a list: {_excerpt(repr(tool_calls))}")
        actions: list[ActionCall] = []
        for i, call in enumerate(tool_calls):
            if not isinstance(call, dict) or call.get("type", "function") != "function":
                continue
            function = call.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(function, dict) or not isinstance(name, str) or not name:
                raise self._fail(f"tool_calls[{i}] has no function name")
            actions.append(ActionCall(name, self._arguments(i, name, function.get("arguments"))))
        return actions

    def _arguments(self, i: int, name: str, arguments: object) -> dict[str, JsonValue]:
        where = f"tool_calls[{i}] ({name})"
        if arguments is None or arguments == "":
            return {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise self._fail(
                    f"{where} arguments are not JSON ({exc}): {_excerpt(str(arguments))}"
                ) from None
        if not isinstance(arguments, dict):
            raise self._fail(f"{where} arguments are not a JSON object: {_excerpt(str(arguments))}")
        return arguments

    # --- the provider interface ----------------------------------------------------------

    async def decide(self, request: ModelRequest) -> ModelDecision:
        self.calls += 1
        return self._decision(await self._post(self._body(request)))

    def problems_at_end(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None  # one connection per attempt: nothing held open
