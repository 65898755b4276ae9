"""Every knob of the demo, defined once.

Each knob is an environment variable with a default. The scripts' flags write the
variable back, so the API, the workers and the enqueuer they start all agree.
"""

import os

DEFAULTS: dict[str, str] = {
    "DEMO_API_HOST": "127.0.0.1",
    "DEMO_API_PORT": "8765",
    "DEMO_DB": "concurrency_demo.db",
    "DEMO_BACKEND": "sqlite",
    "REDIS_URL": "",
    "DEMO_LOG_LEVEL": "info",
    # Where sample.py writes the API's and the workers' logs.
    "DEMO_LOG_DIR": ".demo",
    # A worker polls its queue in a loop; see the README's "Speed" section for the choice.
    "DEMO_RUNNER_SLEEP": "0.1",
    # "1": check the key and claim in one atomic step, so the rule holds across workers.
    "DEMO_ATOMIC_CLAIM": "0",
    # With the claim: seconds without a heartbeat after which a runner's claims are recovered.
    "DEMO_DEAD_AFTER": "15",
    # Where `pynenc monitor` answers: the summaries link into its timeline.
    "DEMO_MONITOR_URL": "http://127.0.0.1:8000",
    # Which pynenc runner a worker is: the article's "thread", "wake" (README "Speed"),
    # or pynenc's "multi-thread" or "process" (README "Scale out safely").
    "DEMO_RUNNER": "thread",
    # "1": sample.py starts each worker from its own copy of the project (--hosts).
    "DEMO_HOSTS": "0",
}

ACCOUNTS = ("acme", "globex", "initech")
OPS = ("fetch_profile", "list_invoices", "refresh_usage", "update_metadata")
REFRESHES_PER_ACCOUNT = 8
HOLD_SECONDS = 0.4
MAX_THREADS = 8
# pynenc's other runners, as the README's scale-out table runs them. MultiThreadRunner starts
# PROCESSES ThreadRunner processes of MAX_THREADS threads each; ProcessRunner forks one
# process per call, MAX_THREADS at a time (its default is one per core).
PROCESSES = 2
RUNNERS: dict[str, dict[str, object]] = {
    "thread": {},
    "wake": {},  # built by demo/wake_runner.py: see runner_config()
    "multi-thread": {"runner_cls": "MultiThreadRunner", "max_processes": PROCESSES},
    "process": {"runner_cls": "ProcessRunner", "min_parallel_slots": MAX_THREADS},
}


def get(name: str) -> str:
    return os.environ.get(name, DEFAULTS[name])


def dead_after() -> float:
    return float(get("DEMO_DEAD_AFTER"))


def runner_sleep() -> float:
    return float(get("DEMO_RUNNER_SLEEP"))


def runner_config() -> dict[str, object]:
    """What DEMO_RUNNER changes in the app's configuration: nothing for the article's runner."""
    name = get("DEMO_RUNNER")
    if name == "wake":
        from demo import wake_runner  # defines WakeRunner, which pynenc then finds by name

        # The same idle cadence as ThreadRunner's two sleeps per loop.
        return wake_runner.config(get("DEMO_BACKEND"), idle=2 * runner_sleep())
    return RUNNERS[name]


def slots_per_worker() -> int:
    """How many calls one worker runs at once, for the floor."""
    return MAX_THREADS * (PROCESSES if get("DEMO_RUNNER") == "multi-thread" else 1)


def api_url() -> str:
    return f"http://{get('DEMO_API_HOST')}:{get('DEMO_API_PORT')}"


def account_names(count: int) -> list[str]:
    """The article's three accounts, then numbered ones when more are asked for."""
    names = list(ACCOUNTS[:count])
    names += [f"acct{i:03d}" for i in range(len(names), count)]
    return names


def op_names(count: int) -> list[str]:
    names = list(OPS[:count])
    names += [f"op{i:02d}" for i in range(len(names), count)]
    return names
