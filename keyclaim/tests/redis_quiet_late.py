"""The quiet trigger on Redis reports the calls of a task its process learns of late, or never.

pynenc knows a task once its module is imported or a call of it is read: a worker started on
the app's module meets a task of another module first in a call of it. Another process (a
runner of triggerapp, starting) registers `follow`'s trigger on `lead`'s SUCCESS or REROUTED,
and sends a call of `lead`. The process under test knows only claimapp's tasks and registers
one of their calls (its status reported: the quiet trigger looks at the store, where no
condition is sourced from them). Then "learnt": it reads the call of `lead` (importing
triggerapp) and reports its SUCCESS, as the worker that ran it does; or "swept": it reports
the call REROUTED by its id alone, as a sweep reports a dead runner's call (keyclaim.recovery),
in a process that may never have read a call of its task. The trigger is registered by a
stock process (pynenc-redis's trigger) in "learnt" and "swept-stock", by a claim process in
"swept".

Run by test_redis_claim.py in an environment with pynenc-redis: python redis_quiet_late.py
REDIS_URL learnt|swept|swept-stock. It prints one JSON object, the conditions each trigger
recorded for the call.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

URL, HOW = sys.argv[1], sys.argv[2]
HERE = Path(__file__).parent
# Who registers: a claim process (its quiet trigger) or a stock one (pynenc-redis's trigger).
BY = "t.app.trigger" if HOW == "swept" else "RedisTrigger(t.app)"
OTHER = (
    "import triggerapp as t; from pynenc.trigger import TriggerBuilder as B; "
    "from pynenc_redis.trigger.redis_trigger import RedisTrigger; "
    "when = B().on_status(t.lead, ['success', 'rerouted']); "
    f"{BY}.register_task_triggers(t.follow, when); print(t.lead(1).invocation_id)"
)


def recorded(trigger: str, invocation_id: str) -> int:
    """In this process, with `trigger`: the conditions recorded for the call of `lead`."""
    import claimapp
    from pynenc import PynencBuilder
    from pynenc.invocation.status import InvocationStatus as S

    import keyclaim

    builder = PynencBuilder().app_id(os.environ["KEYCLAIM_TEST_APP_ID"]).redis(url=URL)
    builder = keyclaim.install(builder.thread_runner(), 15.0, 10.0)
    app = builder.custom_config(trigger_cls=trigger).build()  # triggerapp builds onto it
    claimapp.bound(app, "http://127.0.0.1:9").call_unsafe("acct", "op")  # nothing runs it
    assert "triggerapp" not in sys.modules
    if HOW == "learnt":
        app.state_backend.get_invocation(invocation_id)  # the worker reads the call: lead known
    status = S.SUCCESS if HOW == "learnt" else S.REROUTED  # swept, swept-stock
    app.trigger.report_tasks_status([invocation_id], status)
    found = app.trigger.get_valid_conditions().values()
    return sum(str(v.context.invocation_id) == invocation_id for v in found)


def each(trigger: str) -> int:
    """A store of its own: the other process's registration and call, then this one's run."""
    env = {**os.environ, "KEYCLAIM_TEST_REDIS": URL, "KEYCLAIM_TEST_APP_ID": uuid.uuid4().hex}
    run = {"cwd": HERE, "env": env, "capture_output": True, "text": True, "check": True}
    sent = subprocess.run([sys.executable, "-c", OTHER], **run).stdout.split()[-1]
    done = subprocess.run([sys.executable, __file__, URL, HOW, trigger, sent], **run)
    return int(done.stdout.split()[-1])


if __name__ == "__main__":
    if len(sys.argv) > 3:
        print(recorded(sys.argv[3], sys.argv[4]))
    else:
        print(json.dumps({t: each(t) for t in ("RedisTrigger", "QuietRedisTrigger")}))
