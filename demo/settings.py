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
}

ACCOUNTS = ("acme", "globex", "initech")
OPS = ("fetch_profile", "list_invoices", "refresh_usage", "update_metadata")
REFRESHES_PER_ACCOUNT = 8
HOLD_SECONDS = 0.4
MAX_THREADS = 8


def get(name: str) -> str:
    return os.environ.get(name, DEFAULTS[name])


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
