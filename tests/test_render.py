"""Rendering with chat templates, token selection per loss mode, collation, micro-batches."""
from __future__ import annotations

import itertools

from dataclasses import dataclass, replace

import pytest
import torch

from repbend.config import DataConfig
from repbend.data.collate import (
    LOSS_MODES,
    MicroBatches,
    collate,
    first_response_tokens,
    pair_rows,
    select_tokens,
)
from repbend.data.examples import RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, Example
from repbend.data.render import Rendered, render_all, render_example
from repbend.errors import ConfigError, DataError

LIMITS = dict(max_prompt_tokens=1000, max_response_tokens=1000, max_retain_tokens=1000)


# ---------------------------------------------------------------- templates under test


@dataclass
class Template:
    """How a chat template lays out a conversation, written out by hand (independently of
    the code under test): ``bos`` + one ``turn`` per message, then ``header`` (the
    generation prompt) before the assistant's answer."""

    name: str
    bos: str
    header: str  # what add_generation_prompt appends
    header_last: str  # the last token of the prompt (end of the assistant header)
    eot: str  # what the template writes after an assistant answer

    def turn(self, role: str, content: str) -> str:
        raise NotImplementedError

    def conversation(self, messages) -> str:
        return self.bos + "".join(self.turn(m["role"], m["content"]) for m in messages)

    def prompt(self, messages) -> str:
        return self.conversation(messages) + self.header


class ChatML(Template):
    def turn(self, role, content):
        return f"<|im_start|>{role}\n{content}<|im_end|>\n"


class Llama3(Template):
    def turn(self, role, content):
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


class MistralInst(Template):
    def turn(self, role, content):
        return f"[INST] {content} [/INST]" if role == "user" else f"{content}</s>"


LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_JINJA = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% else %}{{ raise_exception('only user and assistant roles') }}"
    "{% endif %}{% endfor %}"
)

TEMPLATES = {
    "chatml": ChatML("chatml", "", "<|im_start|>assistant\n", "\n", "<|im_end|>\n"),
    "llama3": Llama3("llama3", "<|begin_of_text|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "\n", "<|eot_id|>"),
    "mistral": MistralInst("mistral", "<s>", "", "[/INST]", "</s>"),
}


def make_tokenizer(byte_tok, name):
    if name == "llama3":
        byte_tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
        byte_tok.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
        byte_tok.chat_template = LLAMA3_JINJA
    elif name == "mistral":
        byte_tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
        byte_tok.add_tokens(["[INST]", "[/INST]"], special_tokens=True)
        byte_tok.chat_template = MISTRAL_JINJA
    return byte_tok


@pytest.fixture(params=sorted(TEMPLATES))
def templated(request, byte_tok):
    """(tokenizer, Template) for each chat template under test."""
    return make_tokenizer(byte_tok, request.param), TEMPLATES[request.param]


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer, ids):
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# Neutral placeholders only; varied lengths so the rows of a batch need padding.
EXAMPLES = [
    Example(SAFE, (user("Placeholder benign question one?"),), "Placeholder helpful answer one.", "t:1"),
    Example(
        UNSAFE_SAFE,
        (user("Earlier placeholder turn."), assistant("Earlier placeholder reply."), user("Placeholder request X.")),
        "Placeholder refusal text.",
        "t:2",
        pair_id="p1",
    ),
    Example(UNSAFE_UNSAFE, (user("Placeholder request X."),), "Placeholder complying text, somewhat longer here.", "t:3", pair_id="p1"),
]
RETAIN_EXAMPLE = Example(
    RETAIN,
    (user("Placeholder chat question."), assistant("Placeholder chat answer."), user("Follow-up?"), assistant("Reply.")),
    None,
    "t:4",
)


def expected_spans(template: Template, example: Example) -> dict:
    prompt = template.prompt(example.messages)
    response = example.response + template.eot
    return {
        "response_all": response,
        "prompt_last": template.header_last,
        "prompt_all": prompt,
        "prompt_response": prompt + response,
    }


# ---------------------------------------------------------------- rendering and loss modes


def test_hand_written_layouts_match_the_templates(templated):
    # Guards the expectations below: the hand-written layout is what the template renders.
    tokenizer, template = templated
    for example in EXAMPLES:
        assert tokenizer.apply_chat_template(
            list(example.messages), tokenize=False, add_generation_prompt=True
        ) == template.prompt(example.messages)


def test_render_splits_prompt_and_response(templated):
    tokenizer, template = templated
    for example in EXAMPLES:
        row = render_example(tokenizer, example, **LIMITS)
        spans = expected_spans(template, example)
        assert decode(tokenizer, row.input_ids[: row.prompt_len]) == spans["prompt_all"]
        assert decode(tokenizer, row.input_ids[row.prompt_len :]) == spans["response_all"]
        assert list(row.input_ids) == ids_of(tokenizer, spans["prompt_response"])
        assert (row.kind, row.pair_id, row.source) == (example.kind, example.pair_id, example.source)
        assert len(row) == len(row.input_ids)


def test_an_opening_is_prompt_side_context(templated):
    # Recovery rows: the opening follows the assistant header and no loss reads it as a
    # target; the response span is the refusal alone.
    tokenizer, template = templated
    example = replace(EXAMPLES[1], opening="Placeholder compliant start\n\n", pair_id=None)
    row = render_example(tokenizer, example, **LIMITS)
    assert decode(tokenizer, row.input_ids[: row.prompt_len]) == template.prompt(example.messages) + example.opening
    assert decode(tokenizer, row.input_ids[row.prompt_len :]) == example.response + template.eot
    batch = collate([row], tokenizer.pad_token_id)
    last = batch.input_ids[0][select_tokens(batch, "prompt_last")[0]].tolist()
    assert decode(tokenizer, last) == decode(tokenizer, ids_of(tokenizer, example.opening)[-1:])


def test_response_without_end_of_turn(templated):
    # data.response_end_of_turn=false: the response is the answer's text alone (as the
    # reference code tokenized it), also where the template trims the answer.
    tokenizer, template = templated
    for example in EXAMPLES + [replace(EXAMPLES[0], response=EXAMPLES[0].response + "\n")]:
        row = render_example(tokenizer, example, **LIMITS, end_of_turn=False)
        assert decode(tokenizer, row.input_ids[: row.prompt_len]) == template.prompt(example.messages)
        assert decode(tokenizer, row.input_ids[row.prompt_len :]) == example.response.strip()


def test_response_without_end_of_turn_needs_the_answer_text(byte_tok):
    byte_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match="data.response_end_of_turn=false"):
        render_example(byte_tok, EXAMPLES[0], **LIMITS, end_of_turn=False)


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_select_tokens_decodes_to_intended_span(templated, mode):
    tokenizer, template = templated
    rows = [render_example(tokenizer, example, **LIMITS) for example in EXAMPLES]
    assert len({len(row) for row in rows}) > 1  # padding is exercised
    batch = collate(rows, tokenizer.pad_token_id)
    mask = select_tokens(batch, mode)
    assert mask.dtype == torch.bool and mask.shape == batch.input_ids.shape
    assert not (mask & ~batch.attention_mask).any()  # never a pad position
    for i, example in enumerate(EXAMPLES):
        selected = batch.input_ids[i][mask[i]].tolist()
        assert decode(tokenizer, selected) == expected_spans(template, example)[mode]
        if mode == "prompt_last":
            assert len(selected) == 1


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_truncation_keeps_header_and_cuts_response_right(templated, mode):
    tokenizer, template = templated
    prompt_cap, response_cap = 16, 7  # caps above the longest header (13 tokens)
    rows = [
        render_example(
            tokenizer, example, max_prompt_tokens=prompt_cap, max_response_tokens=response_cap, max_retain_tokens=1000
        )
        for example in EXAMPLES
    ]
    batch = collate(rows, tokenizer.pad_token_id)
    mask = select_tokens(batch, mode)
    for i, example in enumerate(EXAMPLES):
        full_prompt = template.prompt(example.messages)
        prompt_ids = ids_of(tokenizer, full_prompt)
        assert len(prompt_ids) > prompt_cap and len(example.response) > response_cap  # both are cut
        kept_prompt = decode(tokenizer, prompt_ids[-prompt_cap:])
        # Prompts lose their beginning, never the assistant header.
        assert full_prompt.endswith(kept_prompt)
        assert kept_prompt.endswith(template.header or template.header_last)
        kept_response = example.response[:response_cap]  # ASCII: one byte, one token
        expected = {
            "response_all": kept_response,
            "prompt_last": template.header_last,
            "prompt_all": kept_prompt,
            "prompt_response": kept_prompt + kept_response,
        }[mode]
        assert decode(tokenizer, batch.input_ids[i][mask[i]].tolist()) == expected
        assert rows[i].prompt_len == prompt_cap and len(rows[i]) == prompt_cap + response_cap


def test_short_rows_are_not_truncated(templated):
    tokenizer, template = templated
    example = EXAMPLES[0]
    spans = expected_spans(template, example)
    exact = len(ids_of(tokenizer, spans["prompt_all"])), len(ids_of(tokenizer, spans["response_all"]))
    row = render_example(tokenizer, example, max_prompt_tokens=exact[0], max_response_tokens=exact[1], max_retain_tokens=1)
    assert decode(tokenizer, row.input_ids) == spans["prompt_response"]


def test_retain_rows_render_the_whole_conversation(templated):
    tokenizer, template = templated
    row = render_example(tokenizer, RETAIN_EXAMPLE, **LIMITS)
    whole = template.conversation(RETAIN_EXAMPLE.messages)
    assert row.prompt_len == 0 and row.kind == RETAIN
    assert decode(tokenizer, row.input_ids) == whole
    # Every real token of a retain row is read (KL on the whole conversation).
    batch = collate([row, render_example(tokenizer, EXAMPLES[0], **LIMITS)], tokenizer.pad_token_id)
    assert decode(tokenizer, batch.input_ids[0][batch.response_mask[0]].tolist()) == whole
    assert not select_tokens(batch, "prompt_last")[0].any()  # no prompt, no prompt_last token
    # Retain rows are cut from the right at max_retain_tokens.
    cut = render_example(tokenizer, RETAIN_EXAMPLE, max_prompt_tokens=1, max_response_tokens=1, max_retain_tokens=20)
    assert len(cut) == 20 and list(cut.input_ids) == ids_of(tokenizer, whole)[:20]


def test_retain_window_keeps_the_last_answer(templated):
    tokenizer, template = templated
    messages = RETAIN_EXAMPLE.messages[:-1] + (assistant("A reply of some length."),)
    example = replace(RETAIN_EXAMPLE, messages=messages)
    context = ids_of(tokenizer, template.prompt(messages[:-1]))
    answer = ids_of(tokenizer, "A reply of some length." + template.eot)
    whole = ids_of(tokenizer, template.conversation(messages))
    assert whole == context + answer  # the hand-written layout, checked once

    def keep(window):
        return list(render_example(tokenizer, example, **{**LIMITS, "max_retain_tokens": window},
                                   retain_window="last_answer").input_ids)

    # A window at least twice the answer: the context loses its beginning only.
    window = 2 * len(answer) + 1
    assert keep(window) == context[-(len(answer) + 1):] + answer
    # A smaller window: the context's end and the answer's start, half each.
    window = len(answer)
    assert keep(window) == context[-(window - window // 2):] + answer[: window // 2]
    # A short context is kept whole; the answer fills the rest.
    long_answer = "A much longer reply, long enough to overflow. " * 4
    short = replace(example, messages=(user("Q?"), assistant(long_answer)))
    short_context = ids_of(tokenizer, template.prompt(short.messages[:1]))
    window = 2 * len(short_context) + 2
    kept = render_example(tokenizer, short, **{**LIMITS, "max_retain_tokens": window}, retain_window="last_answer")
    assert list(kept.input_ids) == short_context + ids_of(tokenizer, long_answer.strip())[: window - len(short_context)]
    # A conversation that fits is left whole; "start" keeps the first tokens.
    assert keep(len(whole)) == whole
    start = render_example(tokenizer, example, **{**LIMITS, "max_retain_tokens": window})
    assert list(start.input_ids) == whole[:window]


def test_retain_window_needs_a_last_answer(byte_tok):
    example = replace(RETAIN_EXAMPLE, messages=RETAIN_EXAMPLE.messages[:-1])
    with pytest.raises(DataError, match="t:4: data.retain_window=last_answer"):
        render_example(byte_tok, example, **{**LIMITS, "max_retain_tokens": 5}, retain_window="last_answer")


def test_render_all_uses_data_config(byte_tok):
    config = DataConfig(max_prompt_tokens=10, max_response_tokens=4, max_retain_tokens=15)
    rows = render_all(byte_tok, EXAMPLES + [RETAIN_EXAMPLE], config)
    assert [r.prompt_len for r in rows] == [10, 10, 10, 0]
    assert [len(r) for r in rows] == [14, 14, 14, 15]
    rows = render_all(byte_tok, [RETAIN_EXAMPLE], replace(config, retain_window="last_answer"))
    assert decode(byte_tok, rows[0].input_ids).endswith("\nReply.<|im_end|>")  # the context's end, the answer's start


def test_template_failure_is_a_data_error(byte_tok):
    make_tokenizer(byte_tok, "mistral")
    example = Example(SAFE, ({"role": "system", "content": "x"}, user("y")), "z", "file.jsonl:9")
    with pytest.raises(DataError, match="file.jsonl:9"):
        render_example(byte_tok, example, **LIMITS)


# ---------------------------------------------------------------- collate


def synthetic(length, prompt_len, kind=SAFE, start=1):
    return Rendered(tuple(range(start, start + length)), prompt_len, kind)


def test_collate_pads_to_own_longest_and_masks():
    pad = 0
    rows = [synthetic(5, 2), synthetic(9, 4, UNSAFE_SAFE), synthetic(3, 3 - 1, UNSAFE_UNSAFE)]
    batch = collate(rows, pad)
    assert batch.input_ids.shape == (3, 9)
    assert collate(rows[:1] + rows[2:], pad).input_ids.shape == (2, 5)  # own longest, not a fixed length
    for i, row in enumerate(rows):
        n, p = len(row), row.prompt_len
        assert batch.input_ids[i, :n].tolist() == list(row.input_ids)
        assert (batch.input_ids[i, n:] == pad).all()
        assert batch.attention_mask[i].tolist() == [True] * n + [False] * (9 - n)
        assert batch.prompt_mask[i].tolist() == [True] * p + [False] * (9 - p)
        assert batch.response_mask[i].tolist() == [False] * p + [True] * (n - p) + [False] * (9 - n)
    assert batch.is_refusal.tolist() == [False, True, False]
    assert batch.real_tokens == 17 and batch.processed_tokens == 27 and len(batch) == 3
    assert batch.rows == tuple(rows)
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids) and moved.rows == batch.rows


def test_select_tokens_prompt_last_per_row():
    batch = collate([synthetic(6, 2), synthetic(4, 4), synthetic(3, 1)], pad_id=0)
    mask = select_tokens(batch, "prompt_last")
    assert mask.nonzero().tolist() == [[0, 1], [1, 3], [2, 0]]


def test_select_tokens_unknown_mode():
    with pytest.raises(ConfigError, match="response_all"):
        select_tokens(collate([synthetic(3, 1)], 0), "response_last")


def test_first_response_tokens(byte_tok):
    rows = [render_example(byte_tok, example, **LIMITS) for example in EXAMPLES]
    batch = collate(rows, byte_tok.pad_token_id)
    count = torch.tensor([3, 0, 1000])
    mask = first_response_tokens(batch, count)
    picked = [decode(byte_tok, batch.input_ids[i][mask[i]].tolist()) for i in range(3)]
    assert picked[0] == EXAMPLES[0].response[:3]
    assert picked[1] == ""
    assert picked[2] == EXAMPLES[2].response + "<|im_end|>\n"  # capped at the response's end
    assert not (mask & ~batch.response_mask).any()


# ---------------------------------------------------------------- micro-batches


def varied_rows(count, kind=SAFE, seed=0, low=3, high=60):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (count,), generator=generator).tolist()
    # Each row starts with a distinct id so rows can be told apart after collation.
    return [Rendered(tuple([1000 + i] + [7] * (n - 1)), 1, kind, source=f"{kind}:{i}") for i, n in enumerate(lengths)]


def streams_of(seed=0):
    return {"safe": varied_rows(24, SAFE, seed), "unsafe": varied_rows(10, UNSAFE_UNSAFE, seed + 1),
            "retain": varied_rows(7, RETAIN, seed + 2)}


def row_ids(batch):
    return [row.source for row in batch.rows]


def test_micro_batches_deterministic_for_seed_and_index():
    streams = streams_of()
    first = MicroBatches(streams, micro_batch=4, seed=3, pad_id=0)
    second = MicroBatches(streams, micro_batch=4, seed=3, pad_id=0)
    for _ in range(2):  # also after the first has moved on (resume at any index)
        for index in (5, 0, 11):
            a, b = first(index), second(index)
            assert set(a) == {"safe", "unsafe", "retain"}
            for name in a:
                assert row_ids(a[name]) == row_ids(b[name])
                assert torch.equal(a[name].input_ids, b[name].input_ids)
                assert len(a[name]) == 4


def test_micro_batches_differ_for_another_seed():
    streams = streams_of()
    one = MicroBatches(streams, micro_batch=4, seed=3, pad_id=0)
    other = MicroBatches(streams, micro_batch=4, seed=4, pad_id=0)
    assert [row_ids(one(i)["safe"]) for i in range(6)] != [row_ids(other(i)["safe"]) for i in range(6)]
    # and the streams are shuffled independently of each other
    assert row_ids(one(0)["safe"])[:3] != [r.replace("unsafe_unsafe", "safe") for r in row_ids(one(0)["unsafe"])[:3]]


def test_micro_batches_cover_each_row_once_per_epoch():
    rows = streams_of()["safe"]  # 24 rows, 6 micro-batches of 4 per epoch
    batches = MicroBatches({"safe": rows}, micro_batch=4, seed=1, pad_id=0)
    for epoch in range(2):
        seen = [s for i in range(6 * epoch, 6 * epoch + 6) for s in row_ids(batches(i)["safe"])]
        assert sorted(seen) == sorted(r.source for r in rows)
    epoch0 = [s for i in range(6) for s in row_ids(batches(i)["safe"])]
    epoch1 = [s for i in range(6, 12) for s in row_ids(batches(i)["safe"])]
    assert epoch0 != epoch1  # a fresh permutation every epoch


@pytest.mark.parametrize("index", [0, 3, 8])
def test_micro_batches_ranks_split_the_global_batch(index):
    streams = streams_of()
    whole = MicroBatches(streams, micro_batch=4, seed=2, pad_id=0)(index)
    parts = [MicroBatches(streams, micro_batch=4, seed=2, pad_id=0, rank=r, world=2)(index) for r in range(2)]
    for name in whole:
        assert [len(p[name]) for p in parts] == [2, 2]
        assert row_ids(parts[0][name]) + row_ids(parts[1][name]) == row_ids(whole[name])
        # the same tokens, each part padded to its own longest row
        for part in parts:
            assert part[name].input_ids.shape[1] == max(len(r) for r in part[name].rows)


def test_micro_batches_world_must_divide():
    with pytest.raises(ConfigError, match="divisible"):
        MicroBatches(streams_of(), micro_batch=3, seed=0, pad_id=0, world=2)


def test_micro_batches_empty_stream_errors():
    with pytest.raises(ConfigError, match="retain"):
        MicroBatches({"safe": varied_rows(4), "retain": []}, micro_batch=2, seed=0, pad_id=0)


def test_micro_batches_pairs_stream():
    tokenizer_free = [
        Rendered((1, 2, 3, 4), 2, UNSAFE_UNSAFE, pair_id="a"),
        Rendered((1, 2, 9), 2, UNSAFE_SAFE, pair_id="a"),
        Rendered((5, 6, 7, 8, 9), 2, UNSAFE_UNSAFE, pair_id="b"),
        Rendered((5, 6, 9, 9), 2, UNSAFE_SAFE, pair_id="b"),
        Rendered((3, 3, 3), 1, UNSAFE_UNSAFE, pair_id="c"),  # no partner: stays unpaired
        Rendered((4, 4), 1, SAFE),
    ]
    unpaired, pairs = pair_rows(tokenizer_free)
    assert [(u.pair_id, s.pair_id, u.kind, s.kind) for u, s in pairs] == [
        ("a", "a", UNSAFE_UNSAFE, UNSAFE_SAFE),
        ("b", "b", UNSAFE_UNSAFE, UNSAFE_SAFE),
    ]
    assert unpaired == tokenizer_free[4:]
    batches = MicroBatches({"safe": unpaired, "pairs": pairs}, micro_batch=2, seed=0, pad_id=0)(0)
    assert set(batches) == {"safe", "pair_unsafe", "pair_safe"}
    for i in range(2):
        assert batches["pair_unsafe"].rows[i].pair_id == batches["pair_safe"].rows[i].pair_id
    assert batches["pair_safe"].is_refusal.all() and not batches["pair_unsafe"].is_refusal.any()


def padded_tokens(batches, count):
    return sum(batches(i)["safe"].processed_tokens for i in range(count))


def test_group_by_length_lowers_padding():
    rows = varied_rows(400, seed=5, low=2, high=200)
    plain = MicroBatches({"safe": rows}, micro_batch=4, seed=0, pad_id=0)
    grouped = MicroBatches({"safe": rows}, micro_batch=4, seed=0, pad_id=0, group_by_length=True)
    real = sum(len(r) for r in rows)
    plain_tokens, grouped_tokens = padded_tokens(plain, 100), padded_tokens(grouped, 100)
    assert grouped_tokens < 0.8 * plain_tokens
    assert grouped_tokens >= real
    # Same rows once per epoch, just ordered differently.
    seen = [s for i in range(100) for s in row_ids(grouped(i)["safe"])]
    assert sorted(seen) == sorted(r.source for r in rows)
    # Still deterministic.
    again = MicroBatches({"safe": rows}, micro_batch=4, seed=0, pad_id=0, group_by_length=True)
    assert [row_ids(again(i)["safe"]) for i in (0, 42)] == [row_ids(grouped(i)["safe"]) for i in (0, 42)]


def test_group_by_length_mixes_long_and_short_batches_over_steps():
    # Two kinds of rows, long and short: sorted windows alone would give 25 long
    # micro-batches in a row; shuffled micro-batches alternate within a few steps.
    rows = varied_rows(100, seed=1, low=150, high=200) + varied_rows(100, seed=2, low=2, high=20)
    grouped = MicroBatches({"safe": rows}, micro_batch=4, seed=0, pad_id=0, group_by_length=True)
    long = [grouped(i)["safe"].processed_tokens > 4 * 100 for i in range(50)]
    longest_run = max(len(list(run)) for flag, run in itertools.groupby(long) if flag)
    assert 10 < sum(long) < 40 and longest_run < 10


def test_zero_token_budget_is_an_error(byte_tok):
    from repbend.data.examples import Example
    from repbend.data.render import render_example
    from repbend.errors import ConfigError

    example = Example(kind="safe", messages=({"role": "user", "content": "hi"},), response="hello")
    with pytest.raises(ConfigError, match="at least 1"):
        render_example(byte_tok, example, max_prompt_tokens=0, max_response_tokens=8, max_retain_tokens=8)
