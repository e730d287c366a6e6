"""`python -m fuzz ...` is the `mhc-fuzz` command (for checkouts that are not pip-installed)."""
from fuzz.cli import main

raise SystemExit(main())
