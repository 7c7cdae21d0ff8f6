"""Training loop, distributed setup, checkpoints."""
