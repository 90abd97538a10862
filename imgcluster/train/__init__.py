"""Training: the step, the epoch loop with checkpoints and time budget, devices, torchrun."""
