"""Data-parallel training with gloo on this CPU: the gathered memory update, identical replicas,
and a real two-process ``torchrun`` fit that leaves a complete run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import copy_cifar_subset

from imgcluster.config import RunConfig, SCLConfig
from imgcluster.data.cache import ImageCache
from imgcluster.method.scl import SCL
from imgcluster.rundir import read_assignments, read_history, read_json
from imgcluster.train import distributed
from imgcluster.train.distributed import KeyShuffle, World
from imgcluster.train.trainer import Trainer

WORLD = 2
PER_RANK = 4


def memory_state(model: SCL) -> dict[str, torch.Tensor]:
    """Every memory bank, id and pointer, and the instance queue."""
    return {n: b for n, b in model.state_dict().items() if ".memory." in n or "queue." in n}


def small_model() -> SCL:
    torch.manual_seed(0)  # the random initial keys of the memories
    return SCL("small", 64, SCLConfig(k=4, memory_size=12), feature_dim=8, seed=0)


def check_gathered_update(world: World) -> None:
    """2 ranks × 4 keys through shuffle-BN's gather == one process enqueueing the 8 keys."""
    gen = torch.Generator().manual_seed(5)  # the same draws on every rank
    batch = torch.randperm(64, generator=gen)[: WORLD * PER_RANK]  # the global batch
    keys = F.normalize(torch.randn(len(batch), 8, generator=gen), dim=1)
    plan = KeyShuffle.plan(batch, world, gen)
    # This rank's momentum encoder computed the keys of its shuffled slice:
    mine = keys[plan.perm[plan.own]]
    assert torch.equal(batch[plan.perm[plan.own]], plan.key_ids)
    gathered, ids = plan.gather_keys(mine)
    torch.testing.assert_close(gathered, keys, rtol=0, atol=0)
    sharded, single = small_model(), small_model()
    for _ in range(3):  # past a wrap-around of the 12 // 3 = 4-key banks
        sharded.enqueue(gathered, ids)
        single.enqueue(keys, batch)
    for name, value in memory_state(single).items():
        assert torch.equal(memory_state(sharded)[name], value), name


def check_replicas_stay_identical(world: World, images: np.ndarray) -> None:
    """A DDP epoch with its label update leaves every rank with the same model, memories,
    labels and predictions."""
    cfg = RunConfig().replace(
        model={"backbone": "small", "feature_dim": 8},
        scl={"k": 4, "memory_size": 16},
        optim={"batch_size": 4, "epochs": 2, "device": "cpu"},
    )
    names = [f"{i}.png" for i in range(len(images))]
    cache = ImageCache(images, names, [], Path("unused.npy"), reused=True)
    trainer = Trainer(cfg, cache, torch.device("cpu"), world)
    record = trainer.epoch_once(lambda _: None)
    assert record["steps"] == len(images) // (4 * WORLD)  # global batch 4 × 2
    assert sum(record["cluster_sizes"]) == len(images)
    state = {n: t.float() for n, t in trainer.model.state_dict().items()}
    assert trainer.last_predictions is not None
    state["features"] = torch.from_numpy(trainer.last_predictions.features)
    for name, value in state.items():
        both = distributed.all_gather_rows(value[None])
        assert torch.equal(both[0], both[1]), name
    assert (state["queue.ids"] >= 0).all()  # 4 steps × 8 keys filled the 16-key queue
    saved = trainer.state()  # a collective: every rank's augmentation generator
    assert len(saved["aug_gen_ranks"]) == WORLD and saved["world_size"] == WORLD


def _worker(rank: int, init_file: str, images: np.ndarray) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        world = distributed.current_world()
        assert world == World(rank, WORLD, rank)
        check_gathered_update(world)
        check_replicas_stay_identical(world, images)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_memory_update_and_identical_replicas(tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (32, 3, 16, 16), dtype=np.uint8)
    mp.spawn(_worker, args=(str(tmp_path / "init"), images), nprocs=WORLD, join=True)


def test_one_process_is_a_no_op():
    """No process group: the collectives return their input, rank 0 of 1."""
    assert distributed.env_world({}) == World()
    assert distributed.env_world({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank == 1
    with pytest.raises(ValueError, match="RANK"):
        distributed.env_world({"RANK": "2", "WORLD_SIZE": "2"})
    t = torch.arange(3)
    assert distributed.all_gather_rows(t) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.main_first(lambda: 7) == 7
    with distributed.process_group(torch.device("cpu")) as (world, device):
        assert world == World() and device == torch.device("cpu")
        assert not dist.is_initialized()


def torchrun_fit(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(WORLD), "-m", "imgcluster", "fit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_torchrun_fit_writes_a_complete_run_and_resumes(data_root: Path, tmp_path: Path):
    source = copy_cifar_subset(data_root, tmp_path / "src", 10)
    out = tmp_path / "run"
    common = ["--out", str(out), "--k", "4", "--backbone", "small", "--image-size", "16"]
    common += ["--batch-size", "10", "--device", "cpu", "--workers", "1", "--no-report"]
    # a warm-up of one epoch: rank 0 starts the clusters (UMAP + k-means), rank 1 takes its labels
    done = torchrun_fit(str(source), "--epochs", "2", "--warmup", "0.5", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("100 images in 4 clusters") == 1  # rank 0 reports, rank 1 is silent
    for name in ("config.json", "checkpoint.pt", "history.jsonl", "assignments.csv"):
        assert (out / name).is_file(), name
    assert (out / "model.onnx").is_file() and (out / "skipped.csv").is_file()
    assert read_json(out / "config.json")["world_size"] == WORLD
    paths, clusters, _ = read_assignments(out / "assignments.csv")
    assert len(paths) == 100 and clusters.max() < 4
    resumed = torchrun_fit("--resume", "--epochs", "3", *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = read_history(out / "history.jsonl")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(r["world_size"] == WORLD for r in history)
    # global batch 2 × 10: 100 images give 5 steps an epoch
    assert all(r["steps"] == 5 for r in history)
    assert json.loads((out / "history.jsonl").read_text().splitlines()[-1])["epochs_total"] == 3
