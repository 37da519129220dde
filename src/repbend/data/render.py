"""Render examples with the model's chat template into token ids with span boundaries.

A rendered row is ``prompt_ids + response_ids``: the prompt is the conversation up to
and including the assistant header (``add_generation_prompt=True``), the response is
what the template puts after it for the assistant turn (the text and the end-of-turn
marker, or the text alone when ``data.response_end_of_turn`` is false). Prompts are cut
from the left so the assistant header, the position the ``prompt_last`` mode and the
cosine term read, always survives; responses from the right.
An example's ``opening`` (recovery rows) follows the header on the prompt side.
Retain rows are whole conversations, all read as one span, cut to ``max_retain_tokens``
(``data.retain_window``: from the start, or around the last answer).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, DataError
from .examples import RETAIN, Example


@dataclass(frozen=True)
class Rendered:
    input_ids: tuple
    prompt_len: int  # tokens [0, prompt_len) are prompt, the rest response
    kind: str
    pair_id: str | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


def _template(tokenizer, messages, source: str, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)
    except Exception as error:  # jinja raises its own types, e.g. for unsupported roles
        raise DataError(f"the chat template cannot render this row: {error}", file=source) from None


def _ids(tokenizer, text: str) -> list:
    # The template already wrote any BOS it wants as text.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _without_end_of_turn(response_text: str, example: Example) -> str:
    """The rendered assistant turn cut where the answer's text ends (templates may trim it)."""
    answer = example.response.strip()
    at = response_text.find(answer)
    if at < 0:
        raise DataError(
            "data.response_end_of_turn=false needs the answer's text in the rendered turn; this chat template "
            "rewrites it", file=example.source, field="response", value=example.response,
        )
    return response_text[: at + len(answer)]


def _keep_last_answer(tokenizer, example: Example, whole_text: str, window: int) -> list:
    """A retain conversation, rendered whole as ``whole_text``, cut to ``window`` tokens
    around its last assistant turn: the context before it loses its beginning, the answer
    its end. When both are longer than half the window each keeps half; otherwise the
    shorter is whole and the longer fills the rest."""
    if example.messages[-1].get("role") != "assistant":
        raise DataError("data.retain_window=last_answer needs retain conversations that end with an assistant turn",
                        file=example.source, field="messages", value=example.messages[-1].get("role"))
    context_text = _template(tokenizer, example.messages[:-1], example.source, add_generation_prompt=True)
    if not whole_text.startswith(context_text):
        raise DataError("data.retain_window=last_answer needs a chat template that leaves earlier turns as they are; "
                        "this one rewrites them once an answer follows", file=example.source)
    context, answer = _ids(tokenizer, context_text), _ids(tokenizer, whole_text[len(context_text):])
    context_budget = window - min(len(answer), window // 2)
    context = context[-context_budget:]
    return context + answer[: window - len(context)]


def render_example(
    tokenizer, example: Example, *, max_prompt_tokens: int, max_response_tokens: int, max_retain_tokens: int,
    end_of_turn: bool = True, retain_window: str = "start",
) -> Rendered:
    if min(max_prompt_tokens, max_response_tokens, max_retain_tokens) < 1:
        raise ConfigError("data.max_prompt_tokens, max_response_tokens and max_retain_tokens must be at least 1")
    if example.kind == RETAIN:
        text = _template(tokenizer, example.messages, example.source)
        ids = _ids(tokenizer, text)
        if retain_window == "last_answer" and len(ids) > max_retain_tokens:
            ids = _keep_last_answer(tokenizer, example, text, max_retain_tokens)
        return Rendered(tuple(ids[:max_retain_tokens]), 0, example.kind, example.pair_id, example.source)
    prompt_text = _template(tokenizer, example.messages, example.source, add_generation_prompt=True)
    answer = example.opening + example.response
    full_text = _template(
        tokenizer, list(example.messages) + [{"role": "assistant", "content": answer}], example.source
    )
    if full_text.startswith(prompt_text + example.opening):
        response_text = full_text[len(prompt_text) + len(example.opening) :]
    else:  # templates that rewrite earlier turns once an answer follows (e.g. reasoning)
        response_text = example.response + (tokenizer.eos_token or "")
    if not end_of_turn:
        response_text = _without_end_of_turn(response_text, example)
    # The opening is context: it counts as prompt, so no loss reads it as a target.
    prompt_ids = _ids(tokenizer, prompt_text)[-max_prompt_tokens:] + _ids(tokenizer, example.opening)
    response_ids = _ids(tokenizer, response_text)[:max_response_tokens]
    if not response_ids:
        raise DataError("the response renders to no tokens", file=example.source, field="response", value=example.response)
    return Rendered(tuple(prompt_ids + response_ids), len(prompt_ids), example.kind, example.pair_id, example.source)


def render_all(tokenizer, examples, data_config) -> list:
    return [
        render_example(
            tokenizer,
            example,
            max_prompt_tokens=data_config.max_prompt_tokens,
            max_response_tokens=data_config.max_response_tokens,
            max_retain_tokens=data_config.max_retain_tokens,
            end_of_turn=data_config.response_end_of_turn,
            retain_window=data_config.retain_window,
        )
        for example in examples
    ]
