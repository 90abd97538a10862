"""The device layer and the fast paths: same results with and without them, no host syncs on GPU.

The CUDA tests are skipped on a machine without a GPU; benchmarks/gpu_check.sh's figures come
from the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import imgcluster.train.step as train
import imgcluster.train.trainer as trainer_mod
from imgcluster.config import RunConfig
from imgcluster.data.cache import ImageCache
from imgcluster.method.augment import AUGMENTATIONS, augment
from imgcluster.method.memory import SemanticMemory
from imgcluster.train.device import (
    DeviceImages,
    autocast,
    compile_pays,
    resolve_device,
    use_fast_kernels,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_cache(n: int = 96, size: int = 16, seed: int = 0) -> ImageCache:
    images = np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    return ImageCache(images, [f"{i}.png" for i in range(n)], [], Path("unused.npy"), False)


def tiny_config(device: str = "cpu") -> RunConfig:
    return RunConfig().replace(
        data={"image_size": 16},
        model={"backbone": "small"},
        scl={"k": 4, "memory_size": 64},
        optim={"epochs": 2, "batch_size": 32, "device": device, "seed": 7},
    )


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_compile_is_on_by_default_only_on_a_gpu() -> None:
    assert not compile_pays(torch.device("cpu"))
    trainer = trainer_mod.Trainer(tiny_config(), random_cache(), torch.device("cpu"))
    assert trainer.cfg.optim.compile is None
    eager = train.StepKernels.eager(trainer.model, AUGMENTATIONS["colour"])
    assert trainer.kernels.loss_terms == eager.loss_terms  # not compiled
    assert trainer.kernels.augment.func is eager.augment.func is augment
    assert trainer.kernels.augment.keywords == {"params": AUGMENTATIONS["colour"]}


def test_the_trainer_keeps_freed_memory_and_predicts_in_training_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a CPU the label update predicts in batches of the training step's size, so it reuses
    the memory the steps free; the batch size does not change the predictions."""
    calls = []
    monkeypatch.setattr(trainer_mod, "retain_freed_memory", lambda: calls.append(1) or True)
    trainer = trainer_mod.Trainer(tiny_config(), random_cache(), torch.device("cpu"))
    assert calls == [1]
    assert trainer.predict_batch == trainer.batch == 32
    by_step = trainer.predict()
    by_seven = train.predict(trainer.model, trainer.images, 0.1, batch_size=7)
    by_512 = train.predict(trainer.model, trainer.images, 0.1)
    for other in (by_seven, by_512):
        np.testing.assert_allclose(other.features, by_step.features, atol=1e-5)
        for name, probs in by_step.probs.items():
            np.testing.assert_allclose(other.probs[name], probs, atol=1e-5)


def test_cpu_needs_no_autocast_or_kernel_settings() -> None:
    before = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    use_fast_kernels(torch.device("cpu"))
    assert (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()) == before
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_device_images_batches_and_sequence_on_cpu() -> None:
    cache = random_cache(10)
    images = DeviceImages(cache.images, torch.device("cpu"))
    idx = torch.tensor([7, 0, 3])
    assert torch.equal(images.batch(idx), torch.from_numpy(cache.images[[7, 0, 3]]))
    seen = torch.cat([i for i, _ in images.sequential(4)])
    assert seen.tolist() == list(range(10))
    part = [b for _, b in images.sequential(4, torch.tensor([9, 2]))]
    assert torch.equal(part[0], torch.from_numpy(cache.images[[9, 2]]))


def one_epoch(memory_format: torch.memory_format, monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.setattr(train, "MEMORY_FORMAT", memory_format)
    monkeypatch.setattr(trainer_mod, "MEMORY_FORMAT", memory_format)
    trainer = trainer_mod.Trainer(tiny_config(), random_cache(), torch.device("cpu"))
    record = trainer.epoch_once(lambda _: None)
    labels = trainer.model.task("clustering").labels.clone()
    return record["loss"], labels


def test_channels_last_fast_path_gives_the_same_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed, one epoch with and without channels_last: the same losses (to float
    rounding) and the same pseudo labels."""
    loss_fast, labels_fast = one_epoch(torch.channels_last, monkeypatch)
    loss_plain, labels_plain = one_epoch(torch.contiguous_format, monkeypatch)
    assert loss_fast == pytest.approx(loss_plain, rel=1e-4)
    assert (labels_fast == labels_plain).float().mean() >= 0.95


@needs_cuda
def test_resident_cache_on_the_gpu() -> None:
    cache = random_cache(10)
    device = torch.device("cuda")
    images = DeviceImages(cache.images, device)
    assert images.resident is not None and images.resident.device.type == "cuda"
    idx = torch.tensor([4, 1])
    assert torch.equal(images.batch(idx).cpu(), torch.from_numpy(cache.images[[4, 1]]))


@needs_cuda
def test_memory_update_on_the_gpu_matches_the_cpu_without_a_sync() -> None:
    gen = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(40, 8, generator=gen), dim=1)
    labels = torch.randint(0, 3, (40,), generator=gen)
    ids = torch.arange(40)
    cpu, gpu = SemanticMemory(3, 5, 8), SemanticMemory(3, 5, 8).cuda()
    gpu.load_state_dict(cpu.state_dict())
    cpu.enqueue(keys, labels, ids)
    on_gpu = keys.cuda(), labels.cuda(), ids.cuda()  # copies from the host synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu.enqueue(*on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, value in cpu.state_dict().items():
        assert torch.equal(gpu.state_dict()[name].cpu(), value), name


@needs_cuda
def test_a_training_step_on_the_gpu_makes_no_host_sync() -> None:
    trainer = trainer_mod.Trainer(tiny_config("cuda"), random_cache(), torch.device("cuda"))
    idx = torch.arange(32)

    def step() -> None:
        images = trainer.images.batch(idx)
        train.train_step(trainer.model, trainer.optimizer, images, idx, 0.03, trainer.aug_gen)

    step()  # first step: cuDNN autotuning and lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.slow
def test_compiled_kernels_give_the_same_step() -> None:
    """torch.compile'd augmentation and losses (``--compile``) against the eager ones: one step
    from the same state and seed gives the same losses and the same updated weights, to float
    rounding. (Compiling takes tens of seconds on a CPU.)"""
    results = []
    for compiled in (False, True):
        cfg = tiny_config().replace(optim={"compile": compiled})
        trainer = trainer_mod.Trainer(cfg, random_cache(), torch.device("cpu"))
        assert isinstance(trainer.kernels, train.StepKernels)
        idx = torch.arange(32)
        terms = train.train_step(
            trainer.model,
            trainer.optimizer,
            trainer.images.batch(idx),
            idx,
            0.03,
            trainer.aug_gen,
            kernels=trainer.kernels,
        )
        weights = torch.cat([p.detach().flatten() for p in trainer.model.encoder.parameters()])
        results.append((torch.stack([terms.total, terms.id, terms.cd, terms.instance]), weights))
    (eager_terms, eager_weights), (fast_terms, fast_weights) = results
    torch.testing.assert_close(fast_terms, eager_terms, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_weights, eager_weights, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_failing_compiler_leaves_the_step_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile where the compiler cannot work: the step runs eagerly, with the same result."""
    real_compile = torch.compile

    def broken_backend(graph, inputs):
        raise RuntimeError("no compiler on this machine")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=broken_backend))
    results = []
    for compiled in (True, False):
        cfg = tiny_config().replace(optim={"compile": compiled})
        trainer = trainer_mod.Trainer(cfg, random_cache(), torch.device("cpu"))
        idx = torch.arange(32)
        images = trainer.images.batch(idx)
        step = train.train_step(
            trainer.model, trainer.optimizer, images, idx, 0.03, trainer.aug_gen,
            kernels=trainer.kernels,
        )  # fmt: skip
        results.append(step.total)
    torch.testing.assert_close(results[0], results[1])
