"""`python -m interp`: the `interp` command line (interp.cli)."""

from interp.cli import main

main()
