"""The ``lightning-meta`` command and ``python -m lightning_meta``.

``--help``, ``-h``, no arguments and ``list`` print what the package offers (:mod:`lightning_meta.catalog`)
without importing torch or Lightning, in a fraction of a second.  Everything else (``fit``,
``validate``, ``test``, ``predict`` and their options) goes unchanged to :func:`lightning_meta.cli.main`.
"""

from __future__ import annotations

import sys
from typing import Optional

from lightning_meta.catalog import help_text, listing


def main(argv: Optional[list[str]] = None) -> None:
    """Answer ``--help``/``list`` from the catalog; hand any other command line to the Lightning CLI.

    ``argv`` (default ``sys.argv[1:]``) is passed on as given: ``None`` lets LightningCLI read
    ``sys.argv`` itself, as it expects when run from the shell.
    """
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(help_text())
    elif args[0] == "list":
        print(listing())
    else:
        from lightning_meta.cli import main as cli_main

        cli_main(argv)


if __name__ == "__main__":
    main()
