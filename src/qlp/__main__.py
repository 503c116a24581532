"""`python -m qlp` is the same as the `qlp` command."""

from qlp.cli.main import main

main()
