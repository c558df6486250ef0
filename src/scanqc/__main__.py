"""``python -m scanqc`` runs the command-line interface."""

from scanqc.cli.main import main

raise SystemExit(main())
