"""Loss terms over a global micro-batch that several processes share.

With N processes each holds a slice of the global micro-batch (``MicroBatches(rank=,
world=)``), yet every term must be the one a single process computes on the whole
micro-batch. The rule: each process computes its *share* of a term, and the shares sum to
the global value over processes.

- A mean over rows or tokens: the local sum over the count summed over processes (one
  scalar all-reduce). Averaging per-process means would weight a process with fewer
  selected tokens as much as one with more.
- A term over pairs of rows (the cosine spread): the rows of all processes are gathered,
  every process computes the whole term, and each takes 1/N of it.

Data-parallel engines (DDP, FSDP, DeepSpeed) average gradients over processes, so the
training loop backpropagates N times the share: the averaged gradient is then the
gradient of the global loss. With one process a share is the plain value.
"""
from __future__ import annotations

import torch


class Shards:
    def __init__(self, world: int = 1):
        self.world = world

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def mean(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """This process's share of a global mean: ``total`` (its local sum) over the count
        summed over processes; 0 when no process selected anything. Every process must
        call it, also one whose slice selected nothing."""
        count = self._sum(torch.tensor(float(count), device=total.device))
        return total / count.clamp(min=1.0)

    def gather(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        """The ``rows`` of all processes concatenated along ``dim`` in rank order, which is
        the global micro-batch's row order; gradients flow back to this process's rows."""
        if self.world == 1:
            return rows
        return _Gather.apply(rows, dim, self.world)

    def replicated(self, value: torch.Tensor) -> torch.Tensor:
        """The share of a term every process computed in full from gathered rows."""
        return value / self.world

    def total(self, share: torch.Tensor) -> float:
        """The global value of a term from the shares (no gradient)."""
        return float(self._sum(share.detach().clone()))


LOCAL = Shards(1)


class _Gather(torch.autograd.Function):
    """All-gather of tensors whose size along ``dim`` differs between processes."""

    @staticmethod
    def forward(ctx, rows, dim, world):
        import torch.distributed as dist

        size = torch.tensor([rows.shape[dim]], device=rows.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        shape = list(rows.shape)
        shape[dim] = max(sizes)
        padded = rows.new_zeros(shape)
        padded.narrow(dim, 0, rows.shape[dim]).copy_(rows)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.dim, ctx.world, ctx.sizes, ctx.rank = dim, world, sizes, dist.get_rank()
        return torch.cat([part.narrow(dim, 0, n) for part, n in zip(parts, sizes)], dim)

    @staticmethod
    def backward(ctx, grad):
        # Every process computed the same term from the same gathered rows, so the gradient
        # for this process's rows is already here: no communication. Times world because
        # each process backpropagates world x (term / world) and the engine averages.
        start = sum(ctx.sizes[: ctx.rank])
        return grad.narrow(ctx.dim, start, ctx.sizes[ctx.rank]) * ctx.world, None, None
