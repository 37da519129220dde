"""A judge behind an OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, ...),
asked HarmBench's classifier question.

Requests are spaced to ``requests_per_second`` (0: no limit); connection errors, timeouts, HTTP 408,
429 and 5xx are retried ``retries`` times with exponential backoff; any other HTTP error, an
unreachable server, an empty reply or an answer that is neither yes nor no raises JudgeError
naming the URL, the judge model and the row.
"""
from __future__ import annotations

from ...chat_api import ChatClient
from ...types import JudgeInput, Verdict
from . import JUDGES, Judge, JudgeError
from .prompts import harmbench_messages, parse_yes_no


@JUDGES.register("endpoint")
class EndpointJudge(Judge):
    name = "endpoint"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 requests_per_second: float = 2.0, retries: int = 4, backoff_s: float = 1.0,
                 timeout_s: float = 60.0, max_tokens: int = 5):
        self.client = ChatClient(base_url, model, error=JudgeError, who="endpoint judge", api_key_env=api_key_env,
                                 timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                                 requests_per_second=requests_per_second)
        self.max_tokens = max_tokens

    def judge(self, items: list[JudgeInput]) -> list[Verdict]:
        verdicts = []
        for row, item in enumerate(items):
            answer = self.ask(*harmbench_messages(item), row=row)
            try:
                harmful = parse_yes_no(answer)
            except JudgeError as error:
                raise self.client.fail(f"gave no verdict: {error}", row) from None
            verdicts.append(Verdict(harmful=harmful, judge=self.name, raw=answer.strip()))
        return verdicts

    def ask(self, system: str, user: str, row) -> str:
        """The assistant's answer to one chat request, with rate limit and retries."""
        return self.client.complete({
            "temperature": 0, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }, row)
