"""The one training engine shared by every stage: loop, checkpoints, distributed set-up, optimiser, metrics."""
