"""Eq. 1-4 against naive per-sample loops and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from imgcluster.method.losses import (
    UNSHIFTED_MIN_TEMPERATURE,
    bank_logsumexp,
    cluster_discrimination_loss,
    cross_cluster_id_loss,
    info_nce,
    instance_loss,
    mask_own_keys_,
    memory_logits,
    memory_soft_assignment,
    weighted_loss,
)

TAU = 0.1


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def _lse(q: torch.Tensor, memory: torch.Tensor, c: int, tau: float = TAU) -> torch.Tensor:
    """bank_logsumexp with no key belonging to a batch image (nothing masked)."""
    key_ids = torch.full((c, memory.shape[0] // c), -1)
    return bank_logsumexp(q, memory, key_ids, torch.arange(q.shape[0]), c, tau)


def naive_cross_cluster_id(q, k, banks, labels, tau, cross_cluster=True):
    """Eq. 1 written as the paper does, one image at a time."""
    out = []
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = 0.0
        for j in range(banks.shape[0]):
            if cross_cluster and j == int(labels[i]):
                continue  # Eq. 2: Q_i leaves out the image's own cluster's bank
            for key in banks[j]:
                neg += math.exp(float(q[i] @ key) / tau)
        out.append(-math.log(pos / (pos + neg)))
    return torch.tensor(out, dtype=torch.float64)


def naive_soft_assignment(q, banks, tau):
    """Eq. 3, one image and one bank at a time."""
    rows = []
    for i in range(q.shape[0]):
        mass = [sum(math.exp(float(q[i] @ key) / tau) for key in bank) for bank in banks]
        rows.append([m / sum(mass) for m in mass])
    return torch.tensor(rows, dtype=torch.float64)


def test_cross_cluster_id_matches_naive_loop():
    torch.manual_seed(0)
    n, c, b, d = 6, 4, 5, 8
    q, k, banks = _unit(n, d), _unit(n, d), _unit(c, b, d)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    lse = _lse(q, banks.reshape(-1, d), c)
    for cross in (True, False):
        got = cross_cluster_id_loss(q, k, lse, labels, TAU, cross_cluster=cross)
        want = naive_cross_cluster_id(q, k, banks, labels, TAU, cross_cluster=cross)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_id_loss_closed_form_with_orthogonal_negatives():
    """q = k and every negative orthogonal: L = −log(e^{1/τ} / (e^{1/τ} + m)) with m negatives."""
    d, c, b = 16, 3, 4
    q = torch.zeros(1, d)
    q[0, 0] = 1.0
    banks = torch.zeros(c, b, d)
    banks[..., 1] = 1.0  # orthogonal to q: cos = 0, e^0 = 1 each
    lse = _lse(q, banks.reshape(-1, d), c)
    got = cross_cluster_id_loss(q, q, lse, torch.tensor([2]), TAU)
    m = (c - 1) * b  # own bank excluded
    want = -math.log(math.exp(1 / TAU) / (math.exp(1 / TAU) + m))
    assert abs(float(got) - want) < 1e-5


def test_soft_assignment_matches_naive_and_has_no_gradient():
    torch.manual_seed(1)
    q, banks = _unit(5, 6), _unit(3, 7, 6)
    q.requires_grad_(True)
    p = memory_soft_assignment(_lse(q, banks.reshape(-1, 6), 3))
    torch.testing.assert_close(p.double(), naive_soft_assignment(q.detach(), banks, TAU))
    torch.testing.assert_close(p.sum(1), torch.ones(5, dtype=p.dtype))
    assert not p.requires_grad


def test_soft_assignment_is_stable_at_small_temperature():
    q, banks = _unit(4, 8).float(), _unit(3, 50, 8).float()
    p = memory_soft_assignment(_lse(q, banks.reshape(-1, 8), 3, 0.001))
    assert torch.isfinite(p).all()


def test_cluster_discrimination_is_cross_entropy_with_soft_targets():
    torch.manual_seed(2)
    logits, target = torch.randn(7, 4), torch.softmax(torch.randn(7, 4), 1)
    want = (
        sum(
            -sum(
                float(target[i, j]) * math.log(float(torch.softmax(logits[i], 0)[j]))
                for j in range(4)
            )
            for i in range(7)
        )
        / 7
    )
    assert abs(float(cluster_discrimination_loss(logits, target)) - want) < 1e-5
    hard = F.one_hot(torch.arange(4) % 4, 4).float()
    torch.testing.assert_close(
        cluster_discrimination_loss(logits[:4], hard), F.cross_entropy(logits[:4], torch.arange(4))
    )


def test_instance_loss_is_moco_infonce():
    torch.manual_seed(3)
    q, k, queue = _unit(5, 8).float(), _unit(5, 8).float(), _unit(20, 8).float()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / TAU
    want = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(instance_loss(q, k, _lse(q, queue, 1), TAU), want)


def test_own_keys_are_masked_and_only_them():
    logits = torch.zeros(2, 4, 3)  # C×B×n
    key_ids = torch.tensor([[5, 1, -1, 7], [2, 5, 9, 0]])
    masked = mask_own_keys_(logits, key_ids, torch.tensor([5, 0, 3]))
    assert masked is logits  # in place
    assert torch.isinf(masked[..., 0]).sum() == 2 and torch.isinf(masked[0, 0, 0])
    assert torch.isinf(masked[1, 1, 0])
    assert torch.isinf(masked[..., 1]).sum() == 1 and torch.isinf(masked[1, 3, 1])
    assert not torch.isinf(masked[..., 2]).any()


@pytest.mark.parametrize("seed", range(4))
def test_own_key_mask_equals_a_naive_loop(seed: int) -> None:
    """Exactly the entries whose key is a batch image's are masked, also when the batch holds
    an image twice and slots are empty (−1)."""
    gen = torch.Generator().manual_seed(seed)
    c, b, n = 5, 40, 16
    key_ids = torch.randint(-1, 60, (c, b), generator=gen)
    idx = torch.randint(0, 60, (n,), generator=gen)
    idx[1] = idx[0]  # a duplicate
    got = mask_own_keys_(torch.zeros(c, b, n), key_ids, idx)
    want = torch.zeros(c, b, n)
    for bank in range(c):
        for slot in range(b):
            for row in range(n):
                if key_ids[bank, slot] == idx[row]:
                    want[bank, slot, row] = float("-inf")
    assert torch.isinf(want).any()
    assert torch.equal(got, want)
    assert mask_own_keys_(torch.zeros(c, b, 0), key_ids, idx[:0]).shape == (c, b, 0)


def reference_id_loss(q, k, memory, key_ids, idx, labels, c, tau):
    """Eq. 1 the direct way, all in autograd: out-of-place masks, one flat log-sum-exp over
    the positive and every negative key."""
    logits = (q @ memory.T / tau).view(q.shape[0], c, -1)
    logits = logits.masked_fill(key_ids[None] == idx[:, None, None], float("-inf"))
    logits = logits.masked_fill(F.one_hot(labels, c).bool()[:, :, None], float("-inf"))
    positive = (q * k).sum(1) / tau
    flat = torch.cat([positive[:, None], logits.flatten(1)], 1)
    return (torch.logsumexp(flat, 1) - positive).mean()


def test_id_loss_and_its_gradient_match_the_direct_formulation():
    """Shared per-bank log-sum-exps, 1/τ folded into q, the in-place own-key mask and the
    closed-form gradient give the same loss and the same gradient as the direct form."""
    torch.manual_seed(4)
    n, c, b, d = 6, 4, 5, 8
    memory, k = _unit(c * b, d), _unit(n, d)
    key_ids = torch.randint(0, 8, (c, b))
    idx, labels = torch.arange(n), torch.tensor([0, 1, 2, 3, 1, 0])
    q1 = _unit(n, d).requires_grad_(True)
    q2 = q1.detach().clone().requires_grad_(True)
    want = reference_id_loss(q1, k, memory, key_ids, idx, labels, c, TAU)
    lse = bank_logsumexp(q2, memory, key_ids, idx, c, TAU)
    got = cross_cluster_id_loss(q2, k, lse, labels, TAU).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)  # float32 logits
    want.backward()
    got.backward()
    torch.testing.assert_close(q2.grad, q1.grad, rtol=1e-4, atol=1e-5)


def test_info_nce_ignores_masked_negatives():
    pos, neg = torch.tensor([1.0, 2.0]), torch.tensor([[0.5, float("-inf")], [float("-inf")] * 2])
    want = torch.tensor([math.log(math.e + math.exp(0.5)) - 1.0, 0.0])
    torch.testing.assert_close(info_nce(pos, neg), want)


def test_weighted_loss_uniform_weights_equal_mean():
    losses = torch.rand(9)
    torch.testing.assert_close(weighted_loss(losses, torch.full((9,), 1 / 9)), losses.mean())
    torch.testing.assert_close(weighted_loss(losses, None), losses.mean())
    w = torch.zeros(9)
    w[3] = 1.0
    torch.testing.assert_close(weighted_loss(losses, w), losses[3])


def test_bank_logsumexp_gradient_is_exact() -> None:
    """The closed-form backward against finite differences (float64), own keys masked."""
    torch.manual_seed(5)
    n, c, b, d = 4, 3, 5, 6
    memory, key_ids = _unit(c * b, d), torch.randint(0, 6, (c, b))
    q = _unit(n, d).requires_grad_(True)

    def fn(q: torch.Tensor) -> torch.Tensor:
        return bank_logsumexp(q, memory, key_ids, torch.arange(n), c, 0.5)

    assert torch.autograd.gradcheck(fn, (q,))


@pytest.mark.parametrize("tau", [0.005, UNSHIFTED_MIN_TEMPERATURE, TAU, 1.0])
def test_bank_logsumexp_matches_torch_logsumexp_and_survives_an_all_masked_bank(
    tau: float,
) -> None:
    """Both ways of taking e^ℓ: shifted by each bank's maximum (τ below the threshold, where
    e^{1/τ} would overflow float32 at τ = 0.005) and unshifted."""
    torch.manual_seed(6)
    n, c, b, d = 3, 2, 4, 8
    memory, idx = _unit(c * b, d).float(), torch.tensor([7, 8, 9])
    key_ids = torch.tensor([[7, 7, 7, 7], [1, 8, 2, 3]])  # bank 0 holds only image 7's keys
    q1 = _unit(n, d).float().requires_grad_(True)
    q2 = q1.detach().clone().requires_grad_(True)
    logits = (q1 @ memory.T / tau).view(n, c, b)
    logits = logits.masked_fill(key_ids[None] == idx[:, None, None], float("-inf"))
    want = torch.logsumexp(logits, dim=2)
    got = bank_logsumexp(q2, memory, key_ids, idx, c, tau)
    torch.testing.assert_close(got, want)
    assert got[0, 0] == float("-inf")  # every key of bank 0 is image 7's own
    weights = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 3.0]])
    (want.masked_fill(torch.isinf(want), 0) * weights).sum().backward()
    (got.masked_fill(torch.isinf(got), 0) * weights).sum().backward()
    assert torch.isfinite(q2.grad).all()
    torch.testing.assert_close(q2.grad[1:], q1.grad[1:])


def test_memory_logits_compute_in_float32_or_better() -> None:
    q, memory = _unit(2, 4), _unit(6, 4)
    assert memory_logits(q, memory, 3, TAU).dtype == torch.float64
    assert memory_logits(q.bfloat16(), memory.bfloat16(), 3, TAU).dtype == torch.float32
    logits = memory_logits(q, memory, 3, TAU)
    assert logits.shape == (3, 2, 2)  # C×B×n, key-major
    torch.testing.assert_close(logits.permute(2, 0, 1).reshape(2, 6), q @ memory.T / TAU)
