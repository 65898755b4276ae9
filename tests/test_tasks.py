"""The four tasks carry exactly the article's concurrency options, on the article's app."""

import pytest
from pynenc.conf.config_task import ConcurrencyControlType as Mode

import tasks

DISABLED, KEYS = Mode.DISABLED, Mode.KEYS


@pytest.mark.parametrize(
    "name, running, registration, reroute",
    [
        ("call_unsafe", DISABLED, DISABLED, None),
        ("call_keyed", KEYS, DISABLED, True),
        ("call_keyed_drop", KEYS, DISABLED, False),
        ("refresh_once", KEYS, KEYS, True),
    ],
)
def test_task_concurrency_options(
    name: str, running: Mode, registration: Mode, reroute: bool | None
) -> None:
    conf = getattr(tasks, name).conf
    assert conf.running_concurrency == running
    assert conf.registration_concurrency == registration
    if running is KEYS:
        assert tuple(conf.key_arguments) == ("account_id",)
        assert conf.reroute_on_concurrency_control is reroute


def test_app_is_built_as_the_article_says() -> None:
    conf = tasks.app.conf
    assert tasks.app.app_id == "concurrency_demo"
    assert type(tasks.app.orchestrator).__name__ == "SQLiteOrchestrator"
    assert type(tasks.app.runner).__name__ == "ThreadRunner"
    assert tasks.app.runner.conf.min_threads == 1
    assert tasks.app.runner.conf.max_threads == 8
    assert conf.max_pending_seconds == 3.0


def test_the_monitor_finds_exactly_this_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pynenc monitor` scans the folder's top-level files and needs exactly one app."""
    from pynenc.util.import_app import find_app_instance

    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    assert find_app_instance(None).app_id == "concurrency_demo"
