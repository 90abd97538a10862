"""The paper's ablation switches, and the switches of our own additions, on one fixed batch.

Each switch must change what the model computes in the way the paper says (docs/method.md,
"Ablations"): without cross-cluster ID the image's own cluster's bank joins the negatives of
Eq. 1; without online CD Eq. 5 takes the memory's p̃ instead of the classifier's p; without hard
mining Eq. 6's weights are all equal (the plain batch mean). Every expected value is a naive loop
over the paper's sums, so a switch the code ignores fails its test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgcluster.config import SCLConfig
from imgcluster.method.scl import CLUSTERING, SCL
from imgcluster.train.step import Predictions, update_task_labels

N, C, D, TAU = 12, 3, 8, 0.1


def model_with(**switches) -> SCL:
    """The small SCL model, k = 3, its memory holding random unit keys of no image (ids −1)."""
    return SCL("small", N, SCLConfig(k=C, memory_size=12, **switches), feature_dim=D, seed=0)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(N, D, generator=gen), dim=1)
    k = F.normalize(torch.randn(N, D, generator=gen), dim=1)
    return q, k, torch.arange(N)


def naive_id_losses(q, k, banks, bank_ids, labels, idx, own_bank_out=True, own_keys_out=True):
    """Eq. 1 image by image: −log(e^{q·k/τ} / (e^{q·k/τ} + Σ_{negatives} e^{q·k̃/τ}))."""
    out = []
    for i in range(len(q)):
        pos = math.exp(float(q[i].double() @ k[i].double()) / TAU)
        neg = 0.0
        for j in range(banks.shape[0]):
            if own_bank_out and j == int(labels[i]):
                continue  # Eq. 2: Q_i = ∪_{j≠y_i} M_j
            for key, key_id in zip(banks[j], bank_ids[j]):
                if own_keys_out and int(key_id) == int(idx[i]):
                    continue
                neg += math.exp(float(q[i].double() @ key.double()) / TAU)
        out.append(-math.log(pos / (pos + neg)))
    return torch.tensor(out, dtype=torch.float64)


def id_loss(model: SCL, q, k, idx) -> float:
    l_id, _ = model.task(CLUSTERING).losses(q, k, idx, model.cfg)
    return float(l_id)


def task_state(model: SCL):
    task = model.task(CLUSTERING)
    return task.memory.banks, task.memory.ids, task.labels


@pytest.mark.parametrize("cross_cluster", [True, False])
def test_without_cross_cluster_the_own_bank_is_a_negative(cross_cluster: bool):
    model = model_with(cross_cluster=cross_cluster)
    q, k, idx = batch()
    banks, ids, labels = task_state(model)
    got = id_loss(model, q, k, idx)
    want = naive_id_losses(q, k, banks, ids, labels[idx], idx, own_bank_out=cross_cluster)
    assert got == pytest.approx(float(want.mean()), rel=1e-5)
    other = naive_id_losses(q, k, banks, ids, labels[idx], idx, own_bank_out=not cross_cluster)
    assert abs(float(other.mean()) - got) > 1e-3  # the switch makes a difference here
    assert (float(other.mean()) > got) == cross_cluster  # more negatives: a larger loss


@pytest.mark.parametrize("hard_mining", [True, False])
def test_without_hard_mining_every_image_weighs_the_same(hard_mining: bool):
    model = model_with(hard_mining=hard_mining)
    task = model.task(CLUSTERING)
    flips = torch.tensor([1.0, 4, 1, 1, 2, 7, 1, 3, 1, 1, 5, 1])  # s_i: label changes so far
    task.flips.copy_(flips)
    q, k, idx = batch(1)
    banks, ids, labels = task_state(model)
    per_image = naive_id_losses(q, k, banks, ids, labels[idx], idx)
    weighted = float((flips.double() / flips.sum() * per_image).sum())  # Eq. 6
    plain = float(per_image.mean())
    assert abs(weighted - plain) > 1e-3
    assert id_loss(model, q, k, idx) == pytest.approx(weighted if hard_mining else plain, rel=1e-5)


def confident(labels: np.ndarray, c: int = C) -> np.ndarray:
    """Probabilities N×c whose argmax is ``labels``."""
    return np.eye(c, dtype=np.float32)[labels] * 0.8 + 0.2 / c


def per_task(model: SCL, labels: np.ndarray) -> dict[str, np.ndarray]:
    """``labels`` for the 'clustering' task, their ids mod 2 for the under-clustering one."""
    return {
        name: confident(labels) if name == CLUSTERING else confident(labels % 2, 2)
        for name in model.tasks
    }


@pytest.mark.parametrize("online_cd", [True, False])
def test_without_online_cd_the_labels_follow_the_memory(online_cd: bool):
    """Eq. 5 on predictions whose classifier and memory disagree: the labels are the argmax of
    the classifier's p, or with the switch off of the memory's p̃."""
    model = model_with(online_cd=online_cd, balance=0, align_ids=False)
    head = np.arange(N) % C  # 4 images per cluster
    memory = (np.arange(N) // 4).astype(np.int64)  # another partition, 4 per cluster
    features = F.normalize(torch.randn(N, D), dim=1).numpy()
    preds = Predictions(features, per_task(model, head), per_task(model, memory))
    update_task_labels(model, preds, min_size=1, seed=0)
    got = model.task(CLUSTERING).labels.numpy()
    assert np.array_equal(got, head if online_cd else memory)


def test_the_memory_assignment_is_predicted_for_the_label_update_only_without_online_cd():
    from imgcluster.train.device import DeviceImages
    from imgcluster.train.step import predict

    images = DeviceImages(np.zeros((N, 3, 16, 16), dtype=np.uint8), torch.device("cpu"))
    for online_cd in (True, False):
        preds = predict(model_with(online_cd=online_cd), images, TAU)
        assert (CLUSTERING in preds.memory_probs) == (not online_cd)


@pytest.mark.parametrize("mask_own_keys", [True, False])
def test_own_keys_count_as_negatives_only_with_the_mask_off(mask_own_keys: bool):
    """Our own-key mask (docs/method.md, "--preset paper"): with it on, keys an image left in
    the memory are out of its negatives and of MoCo's queue; off, every stored key counts, as in
    the paper's Eq. 1 and MoCo's InfoNCE."""
    model = model_with(mask_own_keys=mask_own_keys)
    q, k, idx = batch(2)
    model.enqueue(F.normalize(torch.randn(N, D), dim=1), idx)  # into its bank and the queue
    task = model.task(CLUSTERING)
    task.labels.copy_((task.labels + 1) % C)  # the images moved: their keys are now foreign
    banks, ids, labels = task_state(model)
    assert (ids >= 0).sum() > 0
    for mask in (True, False):
        want = naive_id_losses(q, k, banks, ids, labels[idx], idx, own_keys_out=mask).mean()
        if mask == mask_own_keys:
            assert id_loss(model, q, k, idx) == pytest.approx(float(want), rel=1e-5)
        else:
            assert abs(id_loss(model, q, k, idx) - float(want)) > 1e-3
    queue, queue_ids = model.queue.banks[0], model.queue.ids[0]
    pos = (q.double() * k.double()).sum(1) / TAU
    logits = q.double() @ queue.double().T / TAU
    if mask_own_keys:
        logits = logits.masked_fill(queue_ids[None, :] == idx[:, None], float("-inf"))
    want = (torch.logaddexp(pos, torch.logsumexp(logits, 1)) - pos).mean()
    instance = model.loss_terms(q, k, idx).instance
    assert float(instance) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.parametrize("align_ids", [True, False])
def test_cluster_ids_are_renamed_to_the_old_ones_only_with_align_ids(align_ids: bool):
    """Our renaming (docs/method.md): a label update that only permutes the cluster ids leaves
    the labels as they were with it on; off, the ids are the classifier's, as in Eq. 5, and
    every image counts a flip (Eq. 6)."""
    model = model_with(balance=0, align_ids=align_ids)
    task = model.task(CLUSTERING)
    old = np.arange(N) % C
    task.labels.copy_(torch.from_numpy(old))
    permuted = (old + 1) % C  # the same partition under other names
    features = F.normalize(torch.randn(N, D), dim=1).numpy()
    update_task_labels(model, Predictions(features, per_task(model, permuted), {}), 1, seed=0)
    want = old if align_ids else permuted
    assert np.array_equal(task.labels.numpy(), want)
    assert torch.equal(task.flips, torch.full((N,), 1.0 if align_ids else 2.0))
