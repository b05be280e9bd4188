"""`python -m xmodal.app.cli`: the `xmodal` command without the installed script (tests, benchmarks)."""

from xmodal.app.cli import main

main()
