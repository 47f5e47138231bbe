"""Evaluation and adaptation of a backbone on a small labeled set: feature extraction (.h5), frozen-backbone
protocols (kNN, linear probes, few-shot, ABMIL), finetuning through the engine, metrics with bootstrap CIs and
reports (tables, plots)."""
