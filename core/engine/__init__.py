"""The one training engine: loop, precision, accumulation, schedules, EMA, checkpoints, DDP/FSDP, logging."""
