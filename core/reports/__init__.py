"""Plots written into ``<run_dir>/report/``."""
