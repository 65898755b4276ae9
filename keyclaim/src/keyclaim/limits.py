"""What a task declares beyond one call per key: up to N calls per key at once, and a rate.

pynenc's `app.task` refuses options it does not know, so the declaration is the library's own,
kept per task key, above `@app.task` in every process that builds the app; keyclaim/README.md,
"Up to N per key, and a rate", says how the claim enforces it. Written against pynenc 0.3.1 and
0.4.0, which have neither. The upstream change that retires it: task options `running_slots=N`
and `rate_limit=(R, period)` on `app.task` (docs/upstream.md).
"""

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from keyclaim.errors import Refused

if TYPE_CHECKING:
    from pynenc.invocation.dist_invocation import DistributedInvocation

# Seconds added to each window: what the delay from a call's start (its RUNNING, when its
# admission is dated again) to the provider may vary by.
DEFAULT_GRACE = 0.05


@dataclass(frozen=True)
class Limit:
    """Up to `slots` calls per key in flight; at most `rate` per `per` seconds (None: no rate)."""

    slots: int = 1
    rate: int | None = None
    per: float = 1.0
    grace: float = DEFAULT_GRACE
    merge: float = 0.0  # seconds a call that found its key free stays open to merging

    @property
    def window(self) -> float:
        """The window the store counts admissions in: the period and its grace."""
        return self.per + self.grace

    def describe(self) -> str:
        text = f"{self.slots} in flight"
        if self.rate is not None:
            text += f", {self.rate} per {self.per:g}s (+{self.grace:g}s)"
        return text + (f", open to merging for {self.merge:g}s" if self.merge else "")


ONE = Limit()
# task key -> its limit, and its rule if it has one; filled as tasks.py (or any app module)
# is imported.
_DECLARED: dict[str, Limit] = {}
_RULES: dict[str, Callable[..., int | Mapping[str, int]]] = {}
# Where a claim step leaves, on the invocation, the override it read in that step.
OVERRIDE = "_keyclaim_override"


def problem(
    slots: int, rate: int | None, per: float, grace: float, merge: float = 0.0
) -> str | None:
    """Why a declaration cannot be enforced, in one line; None when it can."""
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        return f"slots={slots!r}: a whole number of calls, at least 1"
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1):
        return f"rate={rate!r}: a whole number of calls per period, at least 1"
    if not per > 0 or not grace >= 0:
        return f"per={per!r}, grace={grace!r}: the period must be positive, the grace not negative"
    if not merge >= 0:
        return f"merge={merge!r}: seconds, not negative"
    return None


def limit(
    task: Any = None,
    *,
    slots: int = 1,
    rate: int | None = None,
    per: float = 1.0,
    grace: float = DEFAULT_GRACE,
    merge: float = 0.0,
    rule: Callable[..., int | Mapping[str, int]] | None = None,
) -> Any:
    """Declare a task's limit per key: `keyclaim.limit(task, slots=2)`, or as a decorator
    above `@app.task`. Refused (one line) for numbers it cannot enforce, or a task without a
    running control (no key to count by).

    merge: a call that finds its key free waits that long before it may start, so every
    duplicate registered meanwhile merges into it (its task's registration_concurrency); the
    window holds the key's slot, so its calls wait in line (reroute_on_concurrency_control=True).

    rule: the key's slots from its argument values, by name, each as text (as the key is:
    keyclaim.keys), e.g. `rule=lambda account_id: 3 if account_id.startswith("gold") else 1`,
    or a mapping with `slots` and `rate`; `per` and `grace` stay the task's. It must be a pure
    function of those values: every process computes every key's limit with it."""
    if why := problem(slots, rate, per, grace, merge):
        raise Refused(f"keyclaim.limit: {why}")
    declared = Limit(slots, rate, float(per), float(grace), float(merge))

    def declare(task: Any) -> Any:
        from pynenc.conf.config_task import ConcurrencyControlType

        if not hasattr(task, "task_id"):  # a plain function: the decorators in the other order
            raise Refused(
                f"keyclaim.limit: {getattr(task, '__name__', task)!r} is not a pynenc task: "
                "put @keyclaim.limit above @app.task"
            )
        if task.conf.running_concurrency == ConcurrencyControlType.DISABLED:
            raise Refused(
                f"keyclaim.limit: {task.task_id.key} has no running_concurrency, so no key to "
                "count calls by: declare running_concurrency=KEYS with its key_arguments"
            )
        conf = task.conf
        if merge and (
            conf.registration_concurrency == ConcurrencyControlType.DISABLED
            or not conf.reroute_on_concurrency_control
        ):
            raise Refused(
                f"keyclaim.limit: merge={merge:g} on {task.task_id.key}, which merges nothing "
                "or drops its duplicates: declare registration_concurrency and "
                "reroute_on_concurrency_control=True"
            )
        if rule is not None:
            _RULES[task.task_id.key] = checked_rule(task, rule)
        _DECLARED[task.task_id.key] = declared
        return task

    return declare if task is None else declare(task)


def checked_rule(task: Any, rule: Callable) -> Callable:
    """The rule, if it reads exactly the task's key arguments (what can be checked cheaply:
    whether it is pure cannot); refused in one line otherwise."""
    from pynenc.conf.config_task import ConcurrencyControlType

    named = set(inspect.signature(rule).parameters) if callable(rule) else None
    keys = set(task.conf.key_arguments)
    if task.conf.running_concurrency != ConcurrencyControlType.KEYS or named != keys:
        raise Refused(
            f"keyclaim.limit: {task.task_id.key}'s rule must take exactly its key arguments "
            f"{sorted(keys)} under running_concurrency=KEYS, not {sorted(named or ())}"
        )
    return rule


def ruled(task_key: str, own: Limit, answer: int | Mapping[str, int]) -> Limit:
    """The rule's answer over the task's limit; refused (one line) for numbers it cannot
    enforce, first as the producer registers the call."""
    given = {"slots": answer} if isinstance(answer, int) else dict(answer)
    slots, rate = given.pop("slots", own.slots), given.pop("rate", own.rate)
    why = f"{sorted(given)}: it gives only slots and rate" if given else problem(slots, rate, 1, 0)
    if why:
        raise Refused(f"keyclaim.limit: {task_key}'s rule answered {answer!r}: {why}")
    return replace(own, slots=slots, rate=rate)


def of(invocation: "DistributedInvocation") -> Limit:
    """The limit of the invocation's key: one in flight and no rate, unless declared (by a
    rule: for its key), under the override its claim step read (keyclaim.overrides)."""
    task_key, key = invocation.task.task_id.key, {}
    if task_key in _RULES:  # its values are read only for a rule
        from keyclaim.keys import key_arguments

        key = key_arguments(invocation) or {}
    return for_key(task_key, key, getattr(invocation, OVERRIDE, None))


def for_key(task_key: str, key: dict[str, str], override: Any = None) -> Limit:
    """The limit of a task's key (its serialized values), under an override (a
    keyclaim.overrides.Override) if given."""
    own = _DECLARED.get(task_key, ONE)
    if (rule := _RULES.get(task_key)) is not None:
        from keyclaim.keys import key_texts

        own = ruled(task_key, own, rule(**key_texts(key)))
    return own if override is None else override.over(own)


def declared(tasks: Iterable[str] | None = None) -> dict[str, Limit]:
    """Every task's declared limit in this process (of these tasks), by task key."""
    keys = _DECLARED.keys() if tasks is None else set(tasks) & _DECLARED.keys()
    return {key: _DECLARED[key] for key in sorted(keys)}


def describe(task_key: str) -> str:
    """The task's declared limit, and its rule's name: what every process must agree on."""
    text = _DECLARED.get(task_key, ONE).describe()
    rule = _RULES.get(task_key)
    return text if rule is None else f"{text}, by rule {rule.__module__}.{rule.__qualname__}"
