"""The quiet trigger's look at the store while another thread of its process learns tasks.

A thread runner's worker learns a task (its module imported) in the thread that reads a call of
it, while another thread's status report looks at the store over the tasks the process knows.
Forced here: one thread registers 3,000 tasks with the app, the main thread looks all the while,
threads switched every microsecond. It prints the looks that raised, as JSON.

Run by test_redis_claim.py in an environment with pynenc-redis: python redis_quiet_race.py
REDIS_URL.
"""

import json
import sys
import threading
import types
import uuid

from pynenc import PynencBuilder

import keyclaim

builder = PynencBuilder().app_id(uuid.uuid4().hex).redis(url=sys.argv[1])
app = keyclaim.install(builder.thread_runner(), 15.0, 10.0).build()


def learn(count: int) -> None:
    for n in range(count):
        name = f"t{n}"
        code = learn.__code__.replace(co_name=name, co_qualname=name)
        task = types.FunctionType(code, {}, name)
        task.__module__ = "claimapp"  # pynenc names no task of __main__
        app.task(task)


if __name__ == "__main__":
    sys.setswitchinterval(1e-6)
    learning, raised = threading.Thread(target=learn, args=(3000,)), []
    learning.start()
    while learning.is_alive():
        try:
            app.trigger.any_sourced()  # what each status report asks first
        except RuntimeError as error:
            raised.append(str(error))
    learning.join()
    print(json.dumps({"tasks": len(app.tasks), "raised": len(raised), "first": raised[:1]}))
