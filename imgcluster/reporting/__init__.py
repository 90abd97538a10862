"""The HTML report of a run: the page, its plots and contact sheets."""
