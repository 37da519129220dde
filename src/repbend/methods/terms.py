"""Loss terms as pure functions of hidden states, logits and masks, and the target
positions several methods share (:func:`next_token_targets`).

Shapes: ``hidden`` tensors are [L, N, D] (L layers, N selected tokens, D model width);
``logits`` are [N, V]. Everything is computed in float32 whatever the activations' dtype.
With several processes each returns this process's share of the global term (``shards``,
see :mod:`.shards`); every process must call each term, also with nothing selected.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .shards import LOCAL, Shards


def representation_distance(new: torch.Tensor, old: torch.Tensor, squared: bool = False, shards: Shards = LOCAL) -> torch.Tensor:
    """Mean over (layer, token) of ||new - old||_2 (the recipe), or of its square.
    Zero when nothing is selected, so an empty group adds no loss and no NaN."""
    diff = new.float() - old.float()
    # vector_norm's gradient at 0 is 0 (not NaN), and its value is exactly 0 there.
    per_token = diff.pow(2).sum(dim=-1) if squared else torch.linalg.vector_norm(diff, dim=-1)
    return shards.mean(per_token.sum(), per_token.numel())


def cosine_spread(hidden: torch.Tensor, shards: Shards = LOCAL) -> torch.Tensor:
    """Mean over layers of the mean over ordered pairs i != j of 1 - cos(h_i, h_j).
    Zero for identical directions, one for orthogonal ones; needs at least two rows.
    The pairs span all processes' rows."""
    hidden = shards.gather(hidden.float(), dim=1)
    layers, count, _ = hidden.shape
    if count < 2:
        return hidden.new_zeros((), dtype=torch.float32)
    unit = F.normalize(hidden, dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # [L, N, N]
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=hidden.device)
    return shards.replicated((1 - cosine[:, off_diagonal]).mean())


def kl_divergence(
    reference_logits: torch.Tensor,
    logits: torch.Tensor,
    num_sequences: int,
    temperature: float = 2.0,
    reduction: str = "batchmean",
    shards: Shards = LOCAL,
) -> torch.Tensor:
    """KL(reference || model) at ``temperature``, times T^2, on the selected tokens only
    (pad positions never reach here). ``batchmean``: summed over tokens and vocabulary,
    divided by the number of sequences (the recipe); ``token_mean``: per token."""
    total = _TemperedKL.apply(logits, reference_logits.detach(), temperature)
    if reduction == "batchmean":
        return shards.mean(total, num_sequences)
    if reduction == "token_mean":
        return shards.mean(total, logits.shape[0])
    raise ValueError(f"kl reduction {reduction!r} is not batchmean or token_mean")


class _TemperedKL(torch.autograd.Function):
    """Sum over tokens and vocabulary of KL(softmax(ref/T) || softmax(x/T)) * T^2, with the
    gradient in closed form, T * (softmax(x/T) - softmax(ref/T)): exactly zero where the
    two distributions are equal (LoRA B = 0 at the first step). Autograd's form leaves
    float noise there, which AdamW, dividing by each gradient's own scale, magnifies into
    updates that differ with the process count."""

    @staticmethod
    def forward(ctx, logits, reference_logits, temperature):
        reference = F.log_softmax(reference_logits.float() / temperature, dim=-1)
        current = F.log_softmax(logits.float() / temperature, dim=-1)
        ctx.save_for_backward(current, reference)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        return F.kl_div(current, reference, reduction="sum", log_target=True) * temperature**2

    @staticmethod
    def backward(ctx, grad):
        current, reference = ctx.saved_tensors
        return (grad * ctx.temperature * (current.exp() - reference.exp())).to(ctx.dtype), None, None


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, shards: Shards = LOCAL) -> torch.Tensor:
    """Mean next-token cross-entropy; ``logits`` [N, V] already aligned with ``targets`` [N]."""
    return shards.mean(F.cross_entropy(logits.float(), targets, reduction="sum"), logits.shape[0])


def rerouting_cosine(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Circuit breakers' rerouting term: mean over (layer, token) of ReLU(cos(new, old)).
    One while the states are unchanged; zero once they are orthogonal or opposed."""
    if new.numel() == 0:
        return new.new_zeros((), dtype=torch.float32)
    return F.relu(F.cosine_similarity(new.float(), old.float(), dim=-1)).mean()


def mean_squared_error(new: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over every element of (new - target)^2, as RMU's MSE; ``target`` broadcasts
    (e.g. one direction [D] for all tokens)."""
    if new.numel() == 0:
        return new.new_zeros((), dtype=torch.float32)
    return (new.float() - target.float()).pow(2).mean()


def next_token_targets(batch, positions: torch.Tensor) -> tuple:
    """(logit positions, targets): logits at t predict the token at t + 1, for each
    t + 1 in ``positions`` [B, T]."""
    logit_mask = torch.zeros_like(positions)
    logit_mask[:, :-1] = positions[:, 1:]
    return logit_mask, batch.input_ids[:, 1:][positions[:, 1:]]


def sequence_log_probs(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[num_rows]: each row's summed log-probability of its targets. ``logits`` [N, V] and
    ``targets`` [N] are the selected positions, ``rows`` [N] the row each belongs to."""
    token = -F.cross_entropy(logits.float(), targets, reduction="none")
    return token.new_zeros(num_rows).index_add(0, rows, token)


def npo_loss(log_ratio: torch.Tensor, beta: float, shards: Shards = LOCAL) -> torch.Tensor:
    """Negative preference optimisation: mean over sequences of
    -(2/beta) log sigmoid(-beta (log p_theta - log p_ref)); (2/beta) log 2 while the model
    is the reference, falling as its likelihood of the answers drops below the reference's."""
    per_row = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio.float())
    return shards.mean(per_row.sum(), per_row.numel())


def dpo_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """Direct preference optimisation: mean of -log sigmoid(beta (chosen - rejected)),
    each a log-ratio log p_theta - log p_ref of a whole response; log 2 at the start."""
    return -F.logsigmoid(beta * (chosen_ratio.float() - rejected_ratio.float())).mean()
