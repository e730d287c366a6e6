"""What the command line exits with, and the one error type for bad input to the harness."""

EXIT_OK, EXIT_FOUND, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class HarnessError(Exception):
    """Bad input to the harness itself (files, flags, plugins): printed as one line, exit code 2."""
