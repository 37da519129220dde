"""One client for OpenAI-compatible ``/chat/completions`` endpoints (OpenAI, vLLM, llama.cpp
server, ...), shared by the endpoint generation backend and the endpoint judge. Standard
library only (urllib).

Connection failures (refused, reset, dropped, timed out) and HTTP 408, 429 and 5xx are
what a busy or restarting server answers, so they are retried with exponential backoff;
any other HTTP status is the request's own fault (bad key, unknown model, bad body) and
fails at once with the status and the start of the reply body. A reply without text
(``content`` null or empty) is a failed request too: scored, it would read as a refusal.
"""
from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request

RETRY_STATUS = frozenset({408, 429})  # and every 5xx
MAX_BACKOFF_S = 60.0


def retryable(status: int) -> bool:
    return status in RETRY_STATUS or status >= 500


def excerpt(data: bytes, limit: int = 200) -> str:
    """The start of a reply body on one line, for error messages."""
    text = " ".join(data.decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ChatClient:
    """Sends chat requests for one served ``model``; failures raise ``error`` (the caller's
    error class) naming ``who``, the URL, the model and the row."""

    def __init__(self, base_url: str, model: str, *, error: type[Exception], who: str,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 120.0, retries: int = 3,
                 backoff_s: float = 1.0, requests_per_second: float = 0.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.error, self.who = model, error, who
        self.api_key_env = api_key_env
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._last_request = float("-inf")

    def complete(self, body: dict, row) -> str:
        """The assistant's text for one request (``body`` without ``model``)."""
        payload = self.post({"model": self.model, **body}, row)
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self.fail(f"answered without choices[0].message.content: {json.dumps(payload)[:200]}", row) from None
        if not isinstance(content, str) or not content:
            raise self.fail(f"answered with no text (content {content!r}): {json.dumps(payload)[:200]}", row)
        return content

    def post(self, body: dict, row) -> dict:
        """The decoded JSON reply to ``body``, with rate limit and retries."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            self._wait_turn()
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, data, headers), timeout=self.timeout_s) as reply:
                    raw = reply.read()
            except urllib.error.HTTPError as error:
                body_text = excerpt(error.read())
                problem = f"HTTP {error.code} {error.reason}" + (f": {body_text}" if body_text else "")
                if not retryable(error.code):
                    hint = f" (is ${self.api_key_env} set?)" if error.code in (401, 403) and self.api_key_env else ""
                    raise self.fail(f"answered {problem}{hint}", row) from None
                continue
            # URLError (refused, DNS), TimeoutError, ConnectionResetError and RemoteDisconnected
            # are OSErrors; a truncated or garbled reply is an HTTPException.
            except (OSError, http.client.HTTPException) as error:
                problem = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
                continue
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                raise self.fail(f"did not answer JSON: {excerpt(raw)}", row) from None
        raise self.fail(f"failed after {self.retries + 1} attempts: {problem}", row)

    def fail(self, what: str, row) -> Exception:
        return self.error(f"{self.who}: {self.url} {what} (model {self.model!r}, row {row})")

    def _wait_turn(self) -> None:
        delay = self._last_request + self.interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._last_request = time.monotonic()
