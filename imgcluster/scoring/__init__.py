"""How good a clustering is: scores against known classes, label-free warnings, near-duplicates
and outliers, per-epoch diagnostics."""
