"""The library's commands, `python -m keyclaim COMMAND`; top: the keys that hold or wait."""

import sys
from collections.abc import Callable

from keyclaim import top

COMMANDS: dict[str, Callable[[list[str]], int]] = {"top": top.main}


def main(argv: list[str]) -> int:
    """The command's exit status; 2 (and the usage) for a command it does not know."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m keyclaim {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
