"""``python -m imgcluster`` and the ``imgcluster`` console script (also the entry point under
torchrun).

Nothing is imported at module level. A worker process that multiprocessing starts (decode and
assign workers) runs the parent's main script again before its first task; for the console
script that means importing this module, so the CLI itself (typer, rich: ~0.1 s per worker)
is only loaded by :func:`main`.
"""


def main() -> None:
    """Run the command line."""
    from imgcluster.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
