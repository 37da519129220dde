"""A judge behind an OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, ...),
asked HarmBench's classifier question. Standard library only (urllib).

Requests are spaced to ``requests_per_second`` (0: no limit); connection errors, timeouts, HTTP 429 and
5xx are retried ``retries`` times with exponential backoff; any other HTTP error, an
unreachable server or an answer that is neither yes nor no raises JudgeError naming the URL.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from ..types import JudgeInput, Verdict
from . import JUDGES, Judge, JudgeError
from .prompts import harmbench_messages, parse_yes_no

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


@JUDGES.register("endpoint")
class EndpointJudge(Judge):
    name = "endpoint"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 requests_per_second: float = 2.0, retries: int = 4, backoff_s: float = 1.0,
                 timeout_s: float = 60.0, max_tokens: int = 5):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_tokens = model, max_tokens
        self.api_key_env = api_key_env
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self._last_request = float("-inf")

    def judge(self, items: list[JudgeInput]) -> list[Verdict]:
        verdicts = []
        for item in items:
            answer = self.ask(*harmbench_messages(item))
            verdicts.append(Verdict(harmful=parse_yes_no(answer), judge=self.name, raw=answer.strip()))
        return verdicts

    def ask(self, system: str, user: str) -> str:
        """The assistant's answer to one chat request, with rate limit and retries."""
        body = json.dumps({
            "model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self._wait_turn()
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, body, headers), timeout=self.timeout_s) as reply:
                    return self._content(json.loads(reply.read()))
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code} {error.reason}"
                if error.code not in RETRYABLE_STATUS:
                    hint = f" (is ${self.api_key_env} set?)" if error.code in (401, 403) and self.api_key_env else ""
                    raise JudgeError(f"endpoint judge: {self.url} answered {problem}{hint}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                problem = str(getattr(error, "reason", error))
            except json.JSONDecodeError:
                raise JudgeError(f"endpoint judge: {self.url} did not answer JSON") from None
        raise JudgeError(f"endpoint judge: {self.url} failed after {self.retries + 1} attempts: {problem}")

    def _wait_turn(self) -> None:
        delay = self._last_request + self.interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._last_request = time.monotonic()

    def _content(self, payload: dict) -> str:
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"endpoint judge: {self.url} answered without choices[0].message.content: "
                             f"{json.dumps(payload)[:200]}") from None
