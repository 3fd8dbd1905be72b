"""Imported first by every script: a Ctrl-C while the script's imports load (torch, open_clip: seconds)
ends it with one line and exit code 130, not a traceback through the import machinery.

Only when the importing script is the program being run (not when a test or a notebook imports it);
common.run_cli hands Ctrl-C back to Python's KeyboardInterrupt once the script's main() starts.
"""
import os
import signal
import sys


def _interrupted(signum, frame) -> None:
    print("error: interrupted while starting; nothing was done", file=sys.stderr)
    os._exit(130)  # nothing to clean up yet: no file has been opened for writing


if os.path.dirname(os.path.abspath(getattr(sys.modules["__main__"], "__file__", ""))) == \
        os.path.dirname(os.path.abspath(__file__)):
    signal.signal(signal.SIGINT, _interrupted)
