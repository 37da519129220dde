"""What every training method shares: the forward runner, the method interface, the registry.

A method is a loss on the one training loop (``repbend.training``). It declares which data
streams and hidden-state layers it reads, and computes its loss through a
:class:`Runner`, which runs the LoRA model or the frozen model (the same weights with the
adapter disabled, under ``no_grad``) and returns only what the loss reads: the selected
tokens of the requested layers, and logits only at the requested positions.

A method registers with the dataclass of its own settings, so a new method is one module
and no edit of the config (the loss section named after it is parsed into that class)::

    @dataclass
    class MySettings(MethodSettings):
        alpha: float = 1.0
        rules: ClassVar[dict] = {"alpha": above(0)}

    @register_method("mine", settings=MySettings)
    class Mine(Method):
        def loss(self, runner, batches):  # self.settings.alpha
            ...
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import METHOD_SETTINGS, LossConfig, MethodSettings
from ..registry import Registry
from ..models import decoder_of, lm_head_logits, resolve_layers
from .shards import LOCAL, Shards


@dataclass
class Forward:
    hidden: torch.Tensor | None  # [L, N, D] selected tokens of the requested layers
    logits: torch.Tensor | None  # [M, V] at the requested logit positions


@dataclass
class TokenCounter:
    real: int = 0
    processed: int = 0


class Runner:
    """Runs one model (LoRA on, or off as the frozen reference) on a batch. ``shards``:
    how the global micro-batch is split over processes; loss terms reduce through it."""

    def __init__(self, model: nn.Module, shards: Shards = LOCAL):
        self.model = model
        self.shards = shards
        self.decoder = decoder_of(model)
        self.tokens = TokenCounter()

    def forward(
        self,
        batch,
        *,
        layers: list | tuple = (),
        token_mask: torch.Tensor | None = None,
        logit_mask: torch.Tensor | None = None,
        frozen: bool = False,
    ) -> Forward:
        """``layers``: hidden-state indices (0 = embeddings). ``token_mask`` [B, T] picks the
        tokens whose hidden states come back; ``logit_mask`` [B, T] the positions whose
        logits come back (the LM head runs on those rows of the last hidden state only)."""
        if frozen:
            adapter_off = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
            grad = torch.no_grad()
        else:
            adapter_off, grad = nullcontext(), nullcontext()
        self.tokens.real += batch.real_tokens
        self.tokens.processed += batch.processed_tokens
        with adapter_off, grad:
            output = self.decoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask.long(),
                output_hidden_states=bool(layers),
                use_cache=False,
            )
            hidden = None
            if layers:
                states = output.hidden_states
                hidden = torch.stack([states[index][token_mask] for index in layers])
            logits = None
            if logit_mask is not None:
                logits = lm_head_logits(self.model, output.last_hidden_state[logit_mask])
        return Forward(hidden, logits)


@dataclass
class LossOutput:
    # This process's shares of the global loss and terms (the values themselves with one
    # process); summed over processes they give the global values (see .shards).
    total: torch.Tensor
    terms: dict = field(default_factory=dict)  # name -> float (detached), for logging


class Method:
    """A training loss. Subclasses set ``streams`` and implement ``loss``; registered with
    :func:`register_method`, which sets ``name`` and ``settings_class``."""

    name: str = ""
    # The dataclass of the method's own settings (the loss section named after it), or None.
    settings_class: type | None = None
    # Data streams read each micro-batch: any of safe, unsafe, retain, pairs.
    streams: tuple = ("safe", "unsafe", "retain")

    def __init__(self, config: LossConfig, num_blocks: int):
        self.config = config
        # The method's own settings (None without a settings class).
        self.settings = config.section(self.name) if self.settings_class else None
        self.num_blocks = num_blocks

    @property
    def loss_layers(self) -> list:
        """Hidden-state indices the loss reads; LoRA adapts blocks up to the largest."""
        return []

    def start_step(self, step: int, total_steps: int) -> None:
        """Called once per optimizer step (1-based), before its micro-batches: schedules
        count optimizer steps, so they do not change with gradient accumulation."""

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        raise NotImplementedError


def scaled_layers(spec, of_32: tuple, num_blocks: int, what: str) -> list:
    """Hidden-state indices from ``spec``; "auto" scales indices a method's paper gives
    for 32 blocks to ``num_blocks`` (half rounded up, like the RepBend band)."""
    if spec == "auto":
        spec = sorted({min(num_blocks, max(1, int(index * num_blocks / 32 + 0.5))) for index in of_32})
    return resolve_layers(spec, num_blocks, what)


METHODS = Registry("loss.method")


def register_method(name: str, settings: type | None = None):
    """Class decorator: ``loss.method=<name>`` trains with this :class:`Method`; ``settings``
    (a dataclass subclassing :class:`MethodSettings`) holds its own settings, read from the
    loss section ``<name>`` and checked in its ``__post_init__``."""
    reserved = {f.name for f in dataclasses.fields(LossConfig)}
    if name in reserved:
        raise ValueError(f"method name {name!r} is a loss setting's name ({', '.join(sorted(reserved))})")
    if settings is not None and not (dataclasses.is_dataclass(settings) and issubclass(settings, MethodSettings)):
        raise TypeError(f"settings of method {name!r}: expected a dataclass subclassing MethodSettings, got {settings!r}")

    def add(cls):
        METHODS.register(name)(cls)  # a name registered twice fails here, changing nothing
        if settings is not None:
            settings.section = f"loss.{name}"
        cls.name, cls.settings_class = name, settings
        METHOD_SETTINGS[name] = settings
        return cls

    return add


def build_method(config: LossConfig, num_blocks: int) -> Method:
    return METHODS.get(config.method)(config, num_blocks)


class TrainingModule(nn.Module):
    """The LoRA model and its method as one module, so a distributed wrapper sees a single
    forward per micro-batch however many passes the loss makes inside it."""

    def __init__(self, model: nn.Module, method: Method, shards: Shards = LOCAL):
        super().__init__()
        self.model = model
        self.method = method
        self.runner = Runner(model, shards)
        # FSDP's auto-wrap reads the decoder block class from the prepared module.
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, batches: dict) -> LossOutput:
        return self.method.loss(self.runner, batches)
