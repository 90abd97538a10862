"""``python -m imgcluster`` (also the entry point under torchrun)."""

from imgcluster.cli import main

main()
