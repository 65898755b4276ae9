"""The library's commands: `python -m keyclaim top` and `python -m keyclaim limit`.

top: the keys that hold or wait; limit: a key's limit set, cleared or shown while running.
"""

import argparse
import sys
from collections.abc import Callable

from keyclaim import overrides, top

COMMANDS: dict[str, Callable[[list[str]], None]] = {"top": top.main, "limit": overrides.main}

if __name__ == "__main__":
    # A command it does not know is argparse's usage error (status 2); the rest is the command's.
    parser = argparse.ArgumentParser(prog="python -m keyclaim", add_help=False)
    parser.add_argument("command", choices=COMMANDS)
    COMMANDS[parser.parse_args(sys.argv[1:2]).command](sys.argv[2:])
