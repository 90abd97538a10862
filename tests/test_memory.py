"""FIFO banks: wrap-around, per-bank isolation, overflow within one batch, buffers."""

from __future__ import annotations

import pytest
import torch

from imgcluster.method.memory import InstanceQueue, SemanticMemory


def keys(values: list[float], dim: int = 2) -> torch.Tensor:
    """Distinguishable 'keys': row i is [v_i, v_i, ...]."""
    return torch.tensor(values)[:, None].repeat(1, dim)


def naive_enqueue(banks: list[list[float]], ptr: list[int], vals, labels) -> None:
    for v, y in zip(vals, labels):
        banks[y][ptr[y]] = v
        ptr[y] = (ptr[y] + 1) % len(banks[y])


def test_fifo_wraps_around_and_banks_are_isolated():
    mem = SemanticMemory(num_banks=3, bank_size=4, dim=2)
    mem.banks.zero_()
    ref, ptr = [[0.0] * 4 for _ in range(3)], [0, 0, 0]
    gen = torch.Generator().manual_seed(0)
    value = 1.0
    for _ in range(7):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        labels = torch.randint(0, 2, (n,), generator=gen)  # bank 2 never receives keys
        vals = [value + i for i in range(n)]
        value += n
        mem.enqueue(keys(vals), labels, torch.arange(n))
        naive_enqueue(ref, ptr, vals, labels.tolist())
    assert mem.banks[..., 0].tolist() == ref
    assert mem.ptr.tolist() == ptr
    assert (mem.banks[2] == 0).all()


def test_more_keys_than_bank_keeps_the_newest():
    mem = SemanticMemory(num_banks=2, bank_size=3, dim=2)
    mem.enqueue(keys([1, 2, 3, 4, 5]), torch.zeros(5, dtype=torch.long), torch.arange(5))
    # 5 keys into 3 slots from ptr 0: slots get 4, 5, 3 (key 3 in slot 2, then 4, 5 wrap to 0, 1)
    assert mem.banks[0, :, 0].tolist() == [4.0, 5.0, 3.0]
    assert mem.ids[0].tolist() == [3, 4, 2] and mem.ids[1].tolist() == [-1, -1, -1]
    assert mem.ptr.tolist() == [2, 0]


def test_initial_banks_are_unit_vectors_and_buffers_are_saved():
    mem = SemanticMemory(4, 5, 8)
    torch.testing.assert_close(mem.banks.norm(dim=2), torch.ones(4, 5))
    assert {"banks", "ids", "ptr"} <= set(mem.state_dict())
    assert (mem.ids == -1).all()
    assert mem.flat().shape == (20, 8)


def test_bank_size_is_k_over_c_minus_1_capped_by_images():
    assert SemanticMemory.bank_size_for(4096, 10, 60000) == 4096 // 9
    assert SemanticMemory.bank_size_for(4096, 10, 500) == 500 // 9
    assert SemanticMemory.bank_size_for(4096, 2, 60000) == 4096


@pytest.mark.parametrize("args", [(0, 4, 2), (3, 0, 2), (3, 4, 0)])
def test_bad_sizes_raise_value_error(args):
    with pytest.raises(ValueError):
        SemanticMemory(*args)


def test_instance_queue_is_one_fifo():
    q = InstanceQueue(size=4, dim=2)
    q.enqueue(keys([1, 2, 3]), torch.tensor([10, 11, 12]))
    q.enqueue(keys([4, 5]), torch.tensor([13, 14]))
    assert q.banks[0, :, 0].tolist() == [5.0, 2.0, 3.0, 4.0]
    assert q.ids[0].tolist() == [14, 11, 12, 13]
    assert q.flat().shape == (4, 2)
