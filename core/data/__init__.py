"""Datasets, samplers, collation and tensor view transforms (N-channel safe)."""
