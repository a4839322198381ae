"""``harness-report``: compare run records from any number of folders and machines.

    harness-report results/ other-machine/results/ --baseline backend=onnxruntime,precision=fp32

Prints a rich summary, writes Markdown, one self-contained HTML file and CSV (and
Parquet on request) under ``--out``. User errors (a missing path, no records, a
malformed filter) end with one line on stderr and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from harness import results
from harness.report import build, export, html_page, markdown, summary, terminal

FORMATS = ("md", "html", "csv", "parquet")
DEFAULT_FORMATS = "md,html,csv"
DEFAULT_BASELINE = "backend=onnxruntime,precision=fp32"

EXIT_NO_RECORDS = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A problem the user fixes on the command line; reported as one line."""


class _NoRecords(UserError):
    """Nothing to report on: exits with its own status so scripts can tell it apart."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness-report",
        description="Compare harness run records across backends and machines: tables, plots, exports.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="record files, folders (searched recursively) or globs")
    p.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: ./reports)")
    p.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help=f"key=value,... selecting the baseline runs for speedups (default: {DEFAULT_BASELINE!r}; '' for none). "
        f"Keys: {', '.join(summary.FILTER_ALIASES)} or any column name",
    )
    p.add_argument(
        "--format",
        default=DEFAULT_FORMATS,
        help=f"comma-separated outputs among {','.join(FORMATS)} (default: {DEFAULT_FORMATS})",
    )
    p.add_argument("--title", default="harness benchmark report", help="report title")
    return p


def _formats(text: str) -> list[str]:
    chosen = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return chosen


def run(args: argparse.Namespace, console: Console) -> list[Path]:
    """Load, build and write the report; return the files written."""
    formats = _formats(args.format)
    try:
        baseline = summary.parse_filter(args.baseline) if args.baseline.strip() else None
    except ValueError as error:
        raise UserError(f"--baseline: {error}") from None
    try:
        loaded = results.collect(*args.paths)
    except FileNotFoundError as error:
        raise UserError(str(error)) from None
    if loaded.frame.empty:
        detail = f" ({len(loaded.skipped)} file(s) skipped as malformed)" if loaded.skipped else ""
        raise _NoRecords(f"no run records found in {', '.join(map(str, args.paths))}{detail}")
    out: Path = args.out
    writable(out)  # before the work: a bad --out is found in a second, not after every plot
    report = build.build(
        loaded.frame,
        baseline=baseline,
        baseline_text=args.baseline.strip() or None,
        title=args.title,
        inputs=[str(path) for path in args.paths],
        skipped=loaded.skipped,
    )
    terminal.show(report, console)
    written: list[Path] = []
    try:
        if "md" in formats:
            written += markdown.write(report, out)
        if "html" in formats:
            written += html_page.write(report, out)
        if "csv" in formats:
            written.append(export.write_csv(loaded.frame, out / "results.csv"))
        if "parquet" in formats:
            try:
                written.append(export.write_parquet(loaded.frame, out / "results.parquet"))
            except ImportError as error:
                raise UserError(f"parquet export needs pyarrow (pip install 'harness[parquet]'): {error}") from None
    except OSError as error:  # e.g. the disk filled up while writing
        raise UserError(f"cannot write the report to {out}: {_why(error)} (fix: free space or choose another --out)") from None
    return written


def writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, or raise a one-line :class:`UserError`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder (fix: choose a folder path for --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".harness-report-probe-") as probe:
            probe.write(b"x" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise UserError(f"cannot write the report to {out}: {_why(error)} (fix: choose a writable --out folder)") from None


def _why(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=200)
    try:
        written = run(args, console)
    except _NoRecords as error:
        print(f"harness-report: error: {error}", file=sys.stderr)
        return EXIT_NO_RECORDS
    except UserError as error:
        print(f"harness-report: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    reports = [path for path in written if path.suffix != ".png"]
    figures = len(written) - len(reports)
    console.print(f"\nWrote {len(written)} file(s) to [bold]{escape(str(args.out))}[/]" + (f" ({figures} PNG figures)" if figures else ""))
    for path in reports:
        console.print(f"  {path}", highlight=False, markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
