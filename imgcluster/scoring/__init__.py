"""Scores against known classes: metrics, label files, eval, per-epoch diagnostics."""
