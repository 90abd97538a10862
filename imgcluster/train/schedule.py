"""Schedules as pure functions of the step: the cosine learning rate and the time budget.

``--time-budget`` measures the first epoch, then sets the number of epochs so that the whole run,
with its cosine schedule carried to the end, finishes within the budget; the trainer re-plans
after every epoch with the median epoch time so far. The learning rate is a pure function of
(step, total steps), so a re-planned total bends the rest of the curve and still ends at zero.
"""

from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, base_lr: float) -> float:
    """Half-cosine decay from ``base_lr`` at step 0 to 0 at ``total_steps`` (MoCo v2)."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def epochs_for_budget(
    budget_s: float, elapsed_s: float, epoch_s: float, epochs_done: int, max_epochs: int
) -> int:
    """How many epochs in all fit the budget, given the time one epoch took.

    ``elapsed_s`` is everything spent so far (decoding included) after ``epochs_done`` epochs;
    the result is at least ``epochs_done`` (a budget cannot undo work) and at most ``max_epochs``
    (the budget only ever shortens a run).
    """
    remaining = budget_s - elapsed_s
    more = math.floor(remaining / epoch_s) if epoch_s > 0 else max_epochs
    return int(min(max_epochs, max(epochs_done, epochs_done + more)))


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches per epoch (the batch is capped at the number of images)."""
    return max(1, num_images // min(batch_size, num_images))


def total_steps_for(epochs: int, num_images: int, batch_size: int) -> int:
    """Steps of the whole run: the horizon of the cosine schedule."""
    return max(1, epochs * steps_per_epoch(num_images, batch_size))
