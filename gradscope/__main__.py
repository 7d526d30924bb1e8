"""The ``gradscope`` command (``python -m gradscope``, and the console script)."""

import sys


def run(argv=None) -> int:
    """Import the command line and run it: a Ctrl-C while it is imported is answered as at any other moment."""
    try:
        from .cli import main  # here, not at the top: the import itself can be interrupted
    except KeyboardInterrupt:
        print("gradscope: interrupted", file=sys.stderr)
        return 130
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
