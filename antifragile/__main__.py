"""``python -m antifragile``: the same command line as the ``antifragile`` script."""

from antifragile.cli import main

if __name__ == "__main__":
    main()
