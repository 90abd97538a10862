"""The SCL model and one training step: gradients go where the paper says, state changes."""

from __future__ import annotations

import pytest
import torch

from imgcluster.config import RunConfig, SCLConfig
from imgcluster.method.scl import CLUSTERING, SCL, UNDER
from imgcluster.train.step import make_optimizer, train_step


def small_model(n: int = 64, **scl) -> SCL:
    return SCL("small", n, SCLConfig(k=4, memory_size=32, **scl), feature_dim=16, seed=0)


def grads_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_tasks_and_shapes():
    model = small_model()
    assert set(model.tasks) == {CLUSTERING, UNDER}
    assert model.task(CLUSTERING).num_clusters == 4 and model.task(UNDER).num_clusters == 2
    assert model.task(CLUSTERING).memory.banks.shape == (4, 32 // 3, 16)
    assert model.task(UNDER).memory.banks.shape == (2, 32, 16)
    assert (model.task(CLUSTERING).flips == 1).all()
    assert SCL("small", 64, SCLConfig(k=4, method="moco-kmeans"), 16).tasks.keys() == set()


def test_cluster_discrimination_gives_no_gradient_to_the_encoder():
    """Eq. 4 with q detached: only W and B of the heads learn from L_CD."""
    torch.manual_seed(0)
    model = small_model()
    x = torch.randn(8, 3, 32, 32)
    q = model.encoder(x)
    k = model.momentum_encoder(torch.randn(8, 3, 32, 32)).detach()
    task = model.task(CLUSTERING)
    _, l_cd = task.losses(q, k, torch.arange(8), model.cfg)
    l_cd.backward()
    assert grads_of(model.encoder) == []
    assert task.head.fc.weight.grad is not None and task.head.fc.weight.grad.abs().sum() > 0


def test_instance_discrimination_trains_the_encoder_not_the_heads():
    torch.manual_seed(0)
    model = small_model()
    q = model.encoder(torch.randn(8, 3, 32, 32))
    k = model.momentum_encoder(torch.randn(8, 3, 32, 32)).detach()
    l_id, _ = model.task(CLUSTERING).losses(q, k, torch.arange(8), model.cfg)
    l_id.backward()
    assert grads_of(model.encoder)
    assert model.task(CLUSTERING).head.fc.weight.grad is None
    assert grads_of(model.momentum_encoder) == []


def test_train_step_updates_memories_queue_and_momentum_encoder():
    torch.manual_seed(0)
    cfg = RunConfig().replace(scl={"k": 4, "memory_size": 32}, model={"backbone": "small"})
    model = SCL("small", 64, cfg.scl, 16)
    opt = make_optimizer(model, cfg)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    idx = torch.arange(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    terms = train_step(model, opt, images, idx, 0.03, torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert torch.isfinite(terms.total)
    assert (after["queue.ptr"] == 8).all()
    labels = model.task(CLUSTERING).labels[idx]
    counts = torch.bincount(labels, minlength=4)
    assert after["tasks.clustering.memory.ptr"].tolist() == (counts % (32 // 3)).tolist()
    name = next(n for n in before if n.startswith("momentum_encoder.") and n.endswith("weight"))
    assert not torch.equal(before[name], after[name])
    # θ̃ moved by (1 − m)(θ_new − θ̃_old): the momentum copy starts equal to θ
    online = after[name.replace("momentum_encoder.", "encoder.")]
    m = cfg.scl.momentum
    torch.testing.assert_close(after[name], m * before[name] + (1 - m) * online)


def test_same_seed_same_step_on_cpu():
    def run() -> torch.Tensor:
        torch.manual_seed(0)
        cfg = RunConfig().replace(scl={"k": 4, "memory_size": 32})
        model = SCL("small", 64, cfg.scl, 16, seed=0)
        opt = make_optimizer(model, cfg)
        images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        gen = torch.Generator().manual_seed(1)
        return train_step(model, opt, images, torch.arange(8), 0.03, gen).total

    assert torch.equal(run(), run())


def test_heads_learn_at_their_own_scaled_rate():
    cfg = RunConfig().replace(scl={"k": 4, "memory_size": 32}, optim={"head_lr_scale": 50.0})
    model = SCL("small", 64, cfg.scl, 16)
    opt = make_optimizer(model, cfg)
    heads = {id(p) for t in model.tasks.values() for p in t.head.parameters()}
    encoder, head_group = opt.param_groups
    assert {id(p) for p in head_group["params"]} == heads
    assert not heads & {id(p) for p in encoder["params"]}
    assert not {id(p) for p in model.momentum_encoder.parameters()} & {
        id(p) for g in opt.param_groups for p in g["params"]
    }
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    train_step(model, opt, images, torch.arange(8), 0.01, torch.Generator().manual_seed(0))
    assert encoder["lr"] == pytest.approx(0.01) and head_group["lr"] == pytest.approx(0.5)


def test_start_from_a_partition_sets_labels_banks_and_a_nearest_mean_head():
    torch.manual_seed(0)
    cfg = RunConfig().replace(scl={"k": 3, "memory_size": 30})
    model = SCL("small", 60, cfg.scl, 8)
    task = model.task(CLUSTERING)
    centres = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    labels = torch.arange(60) % 3
    features = torch.nn.functional.normalize(centres[labels] + 0.05 * torch.randn(60, 8), dim=1)
    task.start_from(labels, features, temperature=0.1)
    assert torch.equal(task.labels, labels)
    assert torch.equal(task.head(features).argmax(1), labels)  # nearest cluster mean
    # Logits are cosines over τ: at most 1/τ, attained by a cluster's own mean direction.
    assert task.head(centres).max() <= 10.0 + 1e-4
    bank = task.memory.bank_size  # 30 // 2 = 15 keys: each bank holds its cluster's newest
    for c in range(3):
        ids = task.memory.ids[c]
        assert (labels[ids] == c).all() and len(set(ids.tolist())) == bank
        assert torch.allclose(task.memory.banks[c], features[ids])
