"""Entry point of the ``scanqc`` command.

Each sub-command lives in its own module under ``scanqc.cli`` and exposes
``add_parser(subparsers)`` which registers an ``argparse`` parser whose ``func`` default
is ``run(args) -> int``. Heavy imports (torch, pandas) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

from scanqc import __version__

#: Sub-command modules, in the order ``scanqc --help`` lists them.
COMMAND_MODULES = (
    "scanqc.cli.info",
    "scanqc.cli.score",
    "scanqc.cli.labels",
    "scanqc.cli.rank",
    "scanqc.cli.asymmetry",
    "scanqc.cli.train",
    "scanqc.cli.region",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="scanqc",
        description="Find bad data in medical imaging datasets (NIfTI, DICOM, radiographs).",
    )
    parser.add_argument("--version", action="version", version=f"scanqc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:  # command not built yet
                continue
            raise
        mod.add_parser(sub)
    return parser


def _not_pydicom(record: logging.LogRecord) -> bool:
    """Logging filter: False for pydicom's records below CRITICAL."""
    return not (record.name.startswith("pydicom") and record.levelno < logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    """Run ``scanqc`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="scanqc: %(levelname)s: %(message)s",
    )
    if not args.verbose:
        # pydicom logs a failed decoder with a full traceback and header oddities as
        # warnings (and resets its logger's level when imported); scanqc reports each bad
        # file as one line of its own, so pydicom's records are dropped at the handlers
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_pydicom)
            # libraries that set their own loggers to INFO (Dask's scheduler and workers
            # log every start, connection and close) stay quiet unless --verbose
            handler.setLevel(logging.WARNING)
        # numpy's divide/empty-slice warnings on degenerate images (constant, 1 pixel wide)
        # say nothing to a user: such a scan's problem is in its row (warnings or error)
        warnings.filterwarnings("ignore", category=RuntimeWarning)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # score and asymmetry write their rows as they go; rank, labels and train write
        # their file at the end (or in one transaction), so nothing half-done is left
        command = getattr(args, "command", None)
        after = {"score": "; rows already written are kept",
                 "asymmetry": "; rows already written are kept",
                 "rank": "; nothing was written", "labels": "; nothing was written",
                 "train": "; nothing was written"}.get(command, "")
        print(f"scanqc: interrupted{after}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `scanqc info DIR | head`: the reader has what it wanted
        with contextlib.suppress(OSError):  # no second error when Python flushes stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, ValueError) as exc:
        print(f"scanqc: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
