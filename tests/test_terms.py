"""Loss terms against direct, loop-based computations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from repbend.methods.terms import cosine_spread, kl_divergence, representation_distance, token_cross_entropy


def rand(*shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(dtype)


# ---------------------------------------------------------------- representation distance


def loop_distance(new, old, squared):
    layers, tokens, width = new.shape
    total = 0.0
    for l in range(layers):
        for t in range(tokens):
            norm_sq = sum((float(new[l, t, d]) - float(old[l, t, d])) ** 2 for d in range(width))
            total += norm_sq if squared else math.sqrt(norm_sq)
    return total / (layers * tokens)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 8), (1, 1, 4), (2, 7, 3)])
def test_representation_distance_matches_loop(shape, squared):
    new, old = rand(*shape, seed=1), rand(*shape, seed=2)
    got = representation_distance(new, old, squared=squared)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(loop_distance(new, old, squared), rel=1e-5)


def test_representation_distance_is_plain_l2_by_default():
    # One token, difference (3, 4): L2 norm 5, squared 25; the default is the L2 norm.
    new = torch.tensor([[[3.0, 4.0]]])
    old = torch.zeros_like(new)
    assert float(representation_distance(new, old)) == pytest.approx(5.0)
    assert float(representation_distance(new, old, squared=True)) == pytest.approx(25.0)


def test_representation_distance_means_over_layers_and_tokens():
    # Differences of norm 1, 2, 3, 6 over a [2, 2, 1] tensor: mean 3, not a sum.
    new = torch.tensor([[[1.0], [2.0]], [[3.0], [6.0]]])
    assert float(representation_distance(new, torch.zeros_like(new))) == pytest.approx(3.0)


def test_representation_distance_computes_in_float32():
    new, old = rand(2, 3, 16, seed=3, dtype=torch.bfloat16), rand(2, 3, 16, seed=4, dtype=torch.bfloat16)
    got = representation_distance(new, old)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(loop_distance(new.float(), old.float(), False), rel=1e-5)


@pytest.mark.parametrize("squared", [False, True])
def test_representation_distance_zero_for_identical(squared):
    new = rand(3, 4, 8, seed=5)
    assert float(representation_distance(new, new.clone(), squared=squared)) == 0.0


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("shape", [(3, 0, 8), (0, 4, 8)])
def test_representation_distance_empty_is_zero(shape, squared):
    new = torch.zeros(shape, requires_grad=True)
    got = representation_distance(new, torch.zeros(shape), squared=squared)
    assert float(got) == 0.0 and not torch.isnan(got)
    # An empty group must also be safe to add to a loss and backpropagate through.
    (got + new.sum()).backward()


@pytest.mark.parametrize("squared", [False, True])
def test_representation_distance_gradient_finite_at_identical(squared):
    # At step 0 (LoRA B = 0) the LoRA and frozen states are identical: no NaN gradient.
    old = rand(2, 3, 8, seed=6)
    new = old.clone().requires_grad_(True)
    representation_distance(new, old, squared=squared).backward()
    assert torch.isfinite(new.grad).all()
    assert float(new.grad.abs().max()) == 0.0


def test_representation_distance_gradient_flows_to_new_only_direction():
    old = torch.zeros(1, 1, 2)
    new = torch.tensor([[[3.0, 4.0]]], requires_grad=True)
    representation_distance(new, old).backward()
    assert torch.allclose(new.grad, torch.tensor([[[0.6, 0.8]]]))


# ---------------------------------------------------------------- cosine spread


def loop_cosine(hidden):
    layers, count, _ = hidden.shape
    per_layer = []
    for l in range(layers):
        values = []
        for i in range(count):
            for j in range(count):
                if i == j:
                    continue
                a, b = hidden[l, i].double(), hidden[l, j].double()
                values.append(1 - float(a @ b) / (float(a.norm()) * float(b.norm())))
        per_layer.append(sum(values) / len(values))
    return sum(per_layer) / layers


@pytest.mark.parametrize("shape", [(1, 2, 4), (3, 4, 8), (2, 5, 3)])
def test_cosine_spread_matches_double_loop(shape):
    hidden = rand(*shape, seed=7)
    assert float(cosine_spread(hidden)) == pytest.approx(loop_cosine(hidden), rel=1e-5)


def test_cosine_spread_averages_layers_not_pooled_pairs():
    # Layer 0: identical rows (0); layer 1: orthogonal rows (1): the mean over layers is 0.5.
    hidden = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 3.0]]])
    assert float(cosine_spread(hidden)) == pytest.approx(0.5)


def test_cosine_spread_zero_for_identical_directions():
    row = rand(8, seed=8)
    hidden = torch.stack([row, 2 * row, 0.5 * row]).unsqueeze(0).repeat(3, 1, 1)
    assert float(cosine_spread(hidden)) == pytest.approx(0.0, abs=1e-6)


def test_cosine_spread_one_for_orthogonal():
    hidden = torch.eye(4).unsqueeze(0).repeat(2, 1, 1) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1)
    assert float(cosine_spread(hidden)) == pytest.approx(1.0, abs=1e-6)


def test_cosine_spread_two_for_opposite():
    hidden = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]])
    assert float(cosine_spread(hidden)) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("count", [0, 1])
def test_cosine_spread_zero_for_fewer_than_two_rows(count):
    hidden = rand(3, count, 8, seed=9)
    got = cosine_spread(hidden)
    assert float(got) == 0.0 and not torch.isnan(got)


def test_cosine_spread_gradient_finite():
    hidden = rand(2, 3, 4, seed=10).requires_grad_(True)
    cosine_spread(hidden).backward()
    assert torch.isfinite(hidden.grad).all() and float(hidden.grad.abs().sum()) > 0


# ---------------------------------------------------------------- KL divergence


def direct_kl(reference_logits, logits, temperature, divisor):
    p_ref = torch.softmax(reference_logits.double() / temperature, dim=-1)
    p = torch.softmax(logits.double() / temperature, dim=-1)
    total = (p_ref * (p_ref.log() - p.log())).sum()
    return float(total) * temperature**2 / divisor


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kl_batchmean_divides_by_sequences(temperature):
    reference, logits = rand(10, 17, seed=11) * 3, rand(10, 17, seed=12) * 3
    got = kl_divergence(reference, logits, num_sequences=3, temperature=temperature)
    assert float(got) == pytest.approx(direct_kl(reference, logits, temperature, 3), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_token_mean_divides_by_tokens(temperature):
    reference, logits = rand(10, 17, seed=13) * 3, rand(10, 17, seed=14) * 3
    got = kl_divergence(reference, logits, num_sequences=3, temperature=temperature, reduction="token_mean")
    assert float(got) == pytest.approx(direct_kl(reference, logits, temperature, 10), rel=1e-5)


def test_kl_default_is_recipe_batchmean_at_t2():
    reference, logits = rand(6, 9, seed=15), rand(6, 9, seed=16)
    got = kl_divergence(reference, logits, num_sequences=2)
    assert float(got) == pytest.approx(direct_kl(reference, logits, 2.0, 2), rel=1e-5)


def test_kl_direction_is_reference_to_model():
    # KL(ref || model) != KL(model || ref) for these; swapping the arguments must change it.
    reference = torch.tensor([[4.0, 0.0, 0.0]])
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    forward = float(kl_divergence(reference, logits, 1, temperature=1.0))
    assert forward == pytest.approx(direct_kl(reference, logits, 1.0, 1), rel=1e-6)
    assert forward != pytest.approx(float(kl_divergence(logits, reference, 1, temperature=1.0)), rel=1e-3)


def test_kl_zero_for_equal_logits():
    logits = rand(5, 11, seed=17) * 4
    assert float(kl_divergence(logits, logits.clone(), 2)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_divergence(logits, logits + 7.0, 2)) == pytest.approx(0.0, abs=1e-5)  # shift-invariant


def test_kl_empty_is_zero():
    got = kl_divergence(torch.zeros(0, 11), torch.zeros(0, 11), 2)
    assert float(got) == 0.0 and not torch.isnan(got)


def test_kl_unknown_reduction_errors():
    with pytest.raises(ValueError, match="sum"):
        kl_divergence(rand(2, 3), rand(2, 3), 1, reduction="sum")


def test_kl_gradient_zero_at_equal_logits():
    reference = rand(4, 7, seed=18)
    logits = reference.clone().requires_grad_(True)
    kl_divergence(reference, logits, 2).backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().max()) < 1e-6


# ---------------------------------------------------------------- token cross-entropy


def test_token_cross_entropy_matches_torch():
    logits, targets = rand(9, 13, seed=19), torch.randint(0, 13, (9,), generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert float(token_cross_entropy(logits, targets)) == pytest.approx(float(expected), rel=1e-6)
    # and by hand: mean of -log softmax at the target
    by_hand = -torch.log_softmax(logits.double(), -1)[torch.arange(9), targets].mean()
    assert float(token_cross_entropy(logits, targets)) == pytest.approx(float(by_hand), rel=1e-5)


def test_token_cross_entropy_bfloat16_in_float32():
    logits = rand(4, 6, seed=20, dtype=torch.bfloat16)
    targets = torch.tensor([0, 5, 2, 3])
    got = token_cross_entropy(logits, targets)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(torch.nn.functional.cross_entropy(logits.float(), targets)), rel=1e-6)


def test_token_cross_entropy_empty_is_zero():
    got = token_cross_entropy(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    assert float(got) == 0.0 and not torch.isnan(got)


def test_kl_gradient_matches_autograd_and_is_exactly_zero_at_equal_logits():
    reference, logits = rand(5, 11, seed=8), rand(5, 11, seed=9).requires_grad_()
    kl_divergence(reference, logits, 2, temperature=2.0).backward()
    plain = logits.detach().clone().requires_grad_()
    expected = F.kl_div(F.log_softmax(plain / 2, -1), F.log_softmax(reference / 2, -1), reduction="sum", log_target=True) * 4 / 2
    expected.backward()
    torch.testing.assert_close(logits.grad, plain.grad)
    same = reference.clone().requires_grad_()
    kl_divergence(reference, same, 2).backward()
    assert torch.count_nonzero(same.grad) == 0


def test_non_dominated_is_the_pareto_front_under_minimisation():
    from repbend.eval.stats import non_dominated

    assert non_dominated([(1, 3), (2, 2), (2, 3), (3, 1), (1, 3)]) == [0, 1, 3, 4]
