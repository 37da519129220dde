"""Checkpoints: trainable weights, optimizer, scheduler, RNG states and data position,
written atomically (a temporary folder renamed into place) so a kill never leaves a
half-written checkpoint behind. Everything is read back with ``weights_only=True``
(tensors and plain values only): a checkpoint folder from someone else cannot run code."""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import RepbendError

PREFIX = "step-"


class CheckpointError(RepbendError):
    """A checkpoint that cannot be trusted or read."""


def trainable_state(model) -> dict:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """Every generator's state as tensors and plain values (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_plain(path: Path):
    """``torch.load`` of tensors and plain values only; anything else (a pickled object,
    which could run code) is a CheckpointError naming the file."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: holds more than tensors and plain values; refusing to load it "
                              f"(a pickle can run code). Resume from a checkpoint this version wrote. "
                              f"({str(error).splitlines()[0]})") from None


def temporary(final: Path) -> Path:
    """The temporary sibling of ``final`` that :func:`atomic_dir` creates."""
    return final.parent / f".tmp-{final.name}"


def atomic_dir(final: Path) -> Path:
    """A fresh temporary sibling folder to fill and then pass to :func:`commit_dir`."""
    tmp = temporary(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an older ``final`` only once ``tmp`` is whole."""
    old = final.parent / f".old-{final.name}"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, rank_rng: dict, keep: int) -> Path:
    """Write ``root/step-N``; ``rank_rng`` maps process rank -> RNG state."""
    final = checkpoint_dir(root, step)
    tmp = atomic_dir(final)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rank_rng, tmp / "rng.pt")
    return finish_checkpoint(tmp, final, step, keep)


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:06d}"


def finish_checkpoint(tmp: Path, final: Path, step: int, keep: int) -> Path:
    """Mark the filled ``tmp`` complete, move it to ``final`` and drop all but the newest
    ``keep`` checkpoints."""
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    commit_dir(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(folder: Path) -> int:
    return json.loads((folder / "state.json").read_text())["step"]


def list_checkpoints(root: Path) -> list:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple:
    """Restore weights, optimizer and scheduler; returns (step, {rank: RNG state})."""
    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [name for name in weights if name not in params]
    if missing:
        raise RuntimeError(f"checkpoint {folder} does not match this model (e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(load_plain(folder / "optimizer.pt"))
    scheduler.load_state_dict(load_plain(folder / "scheduler.pt"))
    rng = load_plain(folder / "rng.pt")
    return checkpoint_step(folder), rng
