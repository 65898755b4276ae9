"""Which line a call waits in: its key, as the provider sees it.

Written against pynenc 0.3.1 and 0.4.0, whose KEYS control is scoped per task and tells 42 from
"42". The upstream change that retires it: a concurrency key scoped by its values across tasks
(an option of the task, say `key_scope="values"`), compared as text.
"""

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pynenc.conf.config_task import ConcurrencyControlType

from keyclaim.errors import Refused

if TYPE_CHECKING:
    from pynenc.call import Call
    from pynenc.invocation.dist_invocation import DistributedInvocation

LONGEST_KEY = 1024  # bytes of a key's text: a longer one is refused before anything is written


def key_texts(key: dict[str, str]) -> dict[str, str]:
    """Each argument of the key as text, as the provider sees it. pynenc serializes 42 and "42"
    apart, but in a URL, a header or a column they are one account, so they are one key here."""

    def text(serialized: str) -> str:
        try:
            value = json.loads(serialized)
        except ValueError:
            return serialized
        return value if isinstance(value, str) else serialized

    return {arg: text(value) for arg, value in key.items()}


def key_identity(key: dict[str, str]) -> str:
    """The key as the provider sees it (key_texts), as one string."""
    return json.dumps(key_texts(key), sort_keys=True)


def key_arguments(invocation: "DistributedInvocation") -> dict[str, str] | None:
    """The key's serialized arguments; None when the task has no running control."""
    mode = invocation.task.conf.running_concurrency
    if mode == ConcurrencyControlType.DISABLED:
        return None
    return invocation.call.serialized_args_for_concurrency_control(mode) or {}


def refuse_long_keys(calls: Iterable["Call"]) -> None:
    """Refused (one line) for a call whose key's text is longer than LONGEST_KEY, before
    anything of it is stored. Read from the values as given (serialized, pynenc stores a large
    one aside: a write)."""
    for call in calls:
        conf, values, C = call.task.conf, call.arguments.kwargs, ConcurrencyControlType
        names = {C.KEYS: conf.key_arguments, C.ARGUMENTS: values}.get(conf.running_concurrency, ())
        if (size := sum(len(str(values[n]).encode()) for n in names if n in values)) > LONGEST_KEY:
            raise Refused(
                f"{call.task.task_id.key}: a key of {size} bytes, longer than {LONGEST_KEY}: "
                "refused before anything of the call is stored"
            )


def line_key(invocation: "DistributedInvocation", key: dict[str, str]) -> str:
    """The key's line, and its sequence of tokens. Under KEYS, its argument values (as text),
    whichever task calls for them: two tasks keyed on one account_id are one account to the
    provider. Under TASK and ARGUMENTS, the task's own, as pynenc scopes them."""
    return task_line(invocation.task, key)


def task_line(task: Any, key: dict[str, str]) -> str:
    """line_key, for a task and its key's serialized values."""
    if task.conf.running_concurrency == ConcurrencyControlType.KEYS and key:
        return key_identity(key)
    return f"{task.task_id.key}|{key_identity(key)}"


def fence_key(line: str, slot: int) -> str:
    """Which sequence of fencing tokens a slot's claims draw from: the key's own for slot 0 (one
    call per key: today's tokens, unchanged), the key and its slot for the others (a token is
    compared only with tokens of its own slot)."""
    return line if slot == 0 else f"{line}#{slot}"


def waits_in_line(invocation: "DistributedInvocation") -> bool:
    """Blocked calls of this task wait (reroute); the others are dropped when claimed."""
    return bool(invocation.task.conf.reroute_on_concurrency_control)
