"""Micro-batches: each stream of rows padded to its own longest row, never to a fixed length.

A micro-batch holds ``micro_batch`` items; by default an item is one row from each stream
a method reads (``safe`` = P_s and P_us, ``unsafe`` = P_uu, ``retain``, and ``pairs`` when
the paired term is on). A stream may instead be filled from several sources, a given
number of rows of each per item (:class:`Composite`; ``data.batch_composition=recipe``).
Streams are independent, deterministic functions of (seed, position): micro-batch ``i``
is the same whether a run started at 0 or resumed at ``i``, and with several processes
each takes its own slice of the same global micro-batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .examples import UNSAFE_SAFE

LOSS_MODES = ("response_all", "prompt_last", "prompt_all", "prompt_response")
# Rows sorted by length inside windows of this many micro-batches (group_by_length).
LENGTH_WINDOW = 50


@dataclass
class Batch:
    """Right-padded rows. Masks are bool [B, T]; ``is_refusal`` marks P_us rows [B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    response_mask: torch.Tensor
    is_refusal: torch.Tensor
    rows: tuple

    def to(self, device) -> "Batch":
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Batch(**moved, rows=self.rows)

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def processed_tokens(self) -> int:
        return self.input_ids.numel()

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(rows: list, pad_id: int) -> Batch:
    longest = max(len(row) for row in rows)
    size = (len(rows), longest)
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    attention = torch.zeros(size, dtype=torch.bool)
    prompt = torch.zeros(size, dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row.input_ids, dtype=torch.long)
        attention[i, : len(row)] = True
        prompt[i, : row.prompt_len] = True
    is_refusal = torch.tensor([row.kind == UNSAFE_SAFE for row in rows], dtype=torch.bool)
    return Batch(input_ids, attention, prompt, attention & ~prompt, is_refusal, tuple(rows))


def select_tokens(batch: Batch, mode: str) -> torch.Tensor:
    """Bool [B, T]: the tokens a loss mode reads."""
    if mode == "response_all":
        return batch.response_mask
    if mode == "prompt_all":
        return batch.prompt_mask
    if mode == "prompt_response":
        return batch.attention_mask
    if mode == "prompt_last":
        mask = torch.zeros_like(batch.prompt_mask)
        last = batch.prompt_mask.sum(dim=1) - 1
        has_prompt = last >= 0
        mask[torch.arange(len(batch), device=mask.device)[has_prompt], last[has_prompt]] = True
        return mask
    raise ConfigError(f"loss mode {mode!r} is unknown; choose one of {', '.join(LOSS_MODES)}")


def first_response_tokens(batch: Batch, count: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: the first ``count[b]`` response tokens of each row."""
    positions = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device).unsqueeze(0)
    start = batch.prompt_mask.sum(dim=1, keepdim=True)
    return batch.response_mask & (positions < start + count.unsqueeze(1))


def _length(row) -> int:
    return sum(len(member) for member in row) if isinstance(row, tuple) else len(row)


class Stream:
    """An endless, seeded sequence of rows: a fresh permutation every epoch."""

    def __init__(self, rows: list, seed: int, name: str, group_by_length: bool, micro_batch: int):
        if not rows:
            raise ConfigError(f"stream {name!r} has no rows")
        self.rows, self.seed, self.name = rows, seed, name
        self.group_by_length, self.micro_batch = group_by_length, micro_batch
        self._orders: dict = {}

    def _order(self, epoch: int) -> list:
        if epoch not in self._orders:
            rng = random.Random(f"{self.seed}/{self.name}/{epoch}")
            order = list(range(len(self.rows)))
            rng.shuffle(order)
            if self.group_by_length:
                # Sort each window by length and cut it into micro-batches, then shuffle
                # those: sorted order alone would feed long runs of one kind of row
                # (long benign answers, then short refusals) for many steps in a row.
                window = LENGTH_WINDOW * self.micro_batch
                grouped = []
                for start in range(0, len(order), window):
                    chunk = sorted(order[start : start + window], key=lambda j: -_length(self.rows[j]))
                    batches = [chunk[i : i + self.micro_batch] for i in range(0, len(chunk), self.micro_batch)]
                    rng.shuffle(batches)
                    grouped += [i for batch in batches for i in batch]
                order = grouped
            self._orders = {epoch: order}  # only the current epoch is ever needed again
        return self._orders[epoch]

    def take(self, start: int, count: int) -> list:
        n = len(self.rows)
        return [self.rows[self._order(pos // n)[pos % n]] for pos in range(start, start + count)]


@dataclass(frozen=True)
class Draw:
    """One source of a :class:`Composite` stream: ``per_item`` rows of ``rows`` for each
    item, shuffled under their own ``name``."""

    name: str
    rows: list
    per_item: int = 1


@dataclass(frozen=True)
class Composite:
    """A stream whose items take rows from its ``draws``, each item's rows together in
    draw order. Iterating gives every source's rows, as a plain stream's list does."""

    draws: tuple

    def __iter__(self):
        return (row for draw in self.draws for row in draw.rows)


class MicroBatches:
    """Micro-batch ``index`` -> {stream name: Batch}. ``rank``/``world`` slice a global
    micro-batch of ``micro_batch`` items across processes. A stream is a list of rows (one
    per item) or a :class:`Composite`."""

    def __init__(self, streams: dict, micro_batch: int, seed: int, pad_id: int, group_by_length: bool = False,
                 rank: int = 0, world: int = 1):
        if micro_batch % world:
            raise ConfigError(f"train.micro_batch={micro_batch} must be divisible by the {world} processes")
        self.micro_batch, self.pad_id, self.rank, self.world = micro_batch, pad_id, rank, world
        self.streams = {}
        self.pairs = None
        for name, rows in streams.items():
            if name == "pairs":
                self.pairs = Stream(rows, seed, name, group_by_length, micro_batch)
                continue
            draws = rows.draws if isinstance(rows, Composite) else (Draw(name, rows),)
            self.streams[name] = [
                (Stream(draw.rows, seed, draw.name, group_by_length, micro_batch * draw.per_item), draw.per_item)
                for draw in draws
            ]

    def __call__(self, index: int) -> dict:
        local = self.micro_batch // self.world
        start = index * self.micro_batch + self.rank * local
        batches = {name: collate(_item_rows(draws, start, local), self.pad_id) for name, draws in self.streams.items()}
        if self.pairs is not None:
            pairs = self.pairs.take(start, local)
            batches["pair_unsafe"] = collate([unsafe for unsafe, _ in pairs], self.pad_id)
            batches["pair_safe"] = collate([safe for _, safe in pairs], self.pad_id)
        return batches


def _item_rows(draws: list, start: int, count: int) -> list:
    """The rows of items ``start .. start + count``: each item's rows of every draw in turn."""
    taken = [(stream.take(start * per_item, count * per_item), per_item) for stream, per_item in draws]
    return [
        row for item in range(count) for rows, per_item in taken for row in rows[item * per_item : (item + 1) * per_item]
    ]


def pair_rows(rendered: list) -> tuple:
    """Split rows into (unpaired rows, [(P_uu row, P_us row)] sharing a pair_id)."""
    by_id: dict = {}
    for row in rendered:
        if row.pair_id is not None:
            by_id.setdefault(row.pair_id, {})[row.kind] = row
    pairs = [
        (members["unsafe_unsafe"], members["unsafe_safe"])
        for _, members in sorted(by_id.items())
        if "unsafe_unsafe" in members and "unsafe_safe" in members
    ]
    paired = {id(row) for pair in pairs for row in pair}
    return [row for row in rendered if id(row) not in paired], pairs
