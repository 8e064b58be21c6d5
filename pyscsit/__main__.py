"""`python -m pyscsit` is the `pyscsit` command."""

from pyscsit.cli import main

raise SystemExit(main())
