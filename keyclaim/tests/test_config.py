"""One call switches the claim on, and what pynenc resolves is checked.

Overrides, windows and versions are refused in one line, with the library's own exceptions."""

import tomllib
from pathlib import Path

import claimapp
import pytest
from claimkit import unique
from packaging.requirements import Requirement
from pynenc import PynencBuilder

import keyclaim
from keyclaim import versions
from keyclaim.drain import DrainingThreadRunner

LIBRARY = Path(keyclaim.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"  # the library's own


def built(tmp_path: Path, keep: bool = False, **install: object) -> object:
    builder = PynencBuilder().app_id(unique("keyclaim")).sqlite(str(tmp_path / "c.db"))
    builder = builder.thread_runner(min_threads=1, max_threads=2)
    builder = keyclaim.keep_connections(builder) if keep else builder
    return keyclaim.install(builder, 15.0, 10.0, **install).build()


@pytest.mark.parametrize(
    "runner, runner_cls", [("drain", "DrainingThreadRunner"), ("wake", "WakeRunner")]
)
def test_install_selects_the_orchestrator_a_draining_runner_and_the_windows(
    tmp_path: Path, runner: str, runner_cls: str
) -> None:
    app = built(tmp_path, runner=runner)
    keyclaim.check(app)
    assert app.conf.orchestrator_cls == "AtomicClaimSQLiteOrchestrator"
    assert app.conf.runner_cls == runner_cls
    assert app.conf.runner_considered_dead_after_minutes * 60 == pytest.approx(15.0)
    assert app.conf.atomic_service_check_interval_minutes * 60 == pytest.approx(15.0 / 4)
    assert type(app.runner).__name__ == runner_cls  # pynenc finds the class by its name


def test_without_a_runner_install_keeps_the_builders(tmp_path: Path) -> None:
    app = built(tmp_path, runner=None)
    keyclaim.check(app)
    assert app.conf.runner_cls == "ThreadRunner"


OVERRIDES = {
    "another orchestrator": {"PYNENC__ORCHESTRATOR_CLS": "SQLiteOrchestrator"},
    "another runner": {"PYNENC__RUNNER_CLS": "ThreadRunner"},
    "a heartbeat too slow": {"PYNENC__ATOMIC_SERVICE_CHECK_INTERVAL_MINUTES": "0.5"},
    "a window shorter than a call": {"PYNENC__RUNNER_CONSIDERED_DEAD_AFTER_MINUTES": "0.1"},
    "pynenc's own trigger": {"PYNENC__TRIGGER_CLS": "SQLiteTrigger"},
    "pynenc's own broker": {"PYNENC__BROKER_CLS": "SQLiteBroker"},
}


@pytest.mark.parametrize("order", ["keep, then install", "install, then keep"])
def test_kept_connections_go_with_the_claim_in_either_order(tmp_path: Path, order: str) -> None:
    builder = PynencBuilder().app_id(unique("keyclaim")).sqlite(str(tmp_path / "k.db"))
    builder = builder.thread_runner(min_threads=1, max_threads=2)
    if order.startswith("keep"):
        builder = keyclaim.keep_connections(builder)
    builder = keyclaim.install(builder, 15.0, 10.0)
    if order.startswith("install"):
        builder = keyclaim.keep_connections(builder)
    app = builder.build()
    keyclaim.check(app)
    names = [type(c).__name__ for c in (app.orchestrator, app.broker, app.trigger)]
    assert names == ["AtomicClaimSQLiteOrchestrator", "KeptSQLiteBroker", "QuietSQLiteTrigger"]


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_kept_connections_are_refused_on_another_backend(backend: str) -> None:
    builder = PynencBuilder().app_id(unique("keyclaim"))
    if backend == "memory":
        builder = builder.memory()
    else:
        builder = builder.custom_config(orchestrator_cls="RedisOrchestrator")
    with pytest.raises(keyclaim.Refused) as refused:
        keyclaim.keep_connections(builder)
    assert "\n" not in str(refused.value) and "SQLite" in str(refused.value)


@pytest.mark.parametrize("override", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_an_override_that_would_make_the_claim_lie_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: dict[str, str]
) -> None:
    """pynenc's environment variables rank above the builder: the check reads what pynenc
    resolved. Checked by mutation: with check() reading the builder's orchestrator_cls and
    runner_cls in place of the resolved ones, the first two pass unrefused. (With the builder's
    classes in place of the SELECTED markers instead, these are still refused: that mutation is
    caught by test_a_runner_chosen_after_install_is_refused.)"""
    for name, value in override.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(keyclaim.Refused) as refused:
        keyclaim.check(built(tmp_path, keep=True))
    assert "\n" not in str(refused.value)


def test_a_runner_chosen_after_install_is_refused(tmp_path: Path) -> None:
    """The builder's .thread_runner() after install would select pynenc's ThreadRunner, which
    hands calls on while they run when it is stopped. Checked by mutation: with check()
    comparing the builder's runner_cls to the resolved one instead of install's SELECTED
    marker, both say ThreadRunner and this passes unrefused."""
    builder = PynencBuilder().app_id(unique("keyclaim")).sqlite(str(tmp_path / "c.db"))
    builder = keyclaim.install(builder, 15.0, 10.0).thread_runner(max_threads=2)
    with pytest.raises(keyclaim.Refused, match="runner_cls='DrainingThreadRunner'"):
        keyclaim.check(builder.build())


def test_the_draining_runner_selected_after_the_wake_runner_is_refused(tmp_path: Path) -> None:
    """The wake runner sets pynenc's loop sleep to 0 (its wait takes that time); the draining
    runner selected after it kept the 0 and polled the store without a pause, a core busy
    while idle. Checked by mutation: without that check, this passes unrefused."""
    builder = PynencBuilder().app_id(unique("keyclaim")).sqlite(str(tmp_path / "c.db"))
    builder = keyclaim.install(builder, 15.0, 10.0, runner="wake")
    builder = keyclaim.use_runner(builder, "drain")
    with pytest.raises(keyclaim.Refused, match="without a pause"):
        keyclaim.check(builder.build())


def test_install_refuses_windows_that_would_take_a_live_call_for_dead(tmp_path: Path) -> None:
    builder = PynencBuilder().app_id(unique("keyclaim")).sqlite(str(tmp_path / "c.db"))
    with pytest.raises(keyclaim.Refused, match="dead-after window must be longer"):
        keyclaim.install(builder, dead_after=5.0, longest_call=10.0)


@pytest.mark.parametrize(
    "build",
    [
        lambda tmp: keyclaim.install(PynencBuilder().sqlite(str(tmp / "c.db")), 15, 10),
        lambda tmp: claimapp.app.orchestrator.__class__(claimapp.app),
        lambda tmp: versions.check_resolved("SQLiteOrchestrator", "WakeRunner"),
        lambda tmp: versions.check_resolved("SQLiteOrchestrator", "DrainingThreadRunner"),
        lambda tmp: keyclaim.keep_connections(PynencBuilder().sqlite(str(tmp / "k.db"))),
        lambda tmp: versions.check_resolved("SQLiteOrchestrator", "KeptSQLiteBroker"),
    ],
    ids=[
        "install",
        "the orchestrator, as pynenc builds it",
        "wake runner",
        "draining runner",
        "kept connections",
        "a kept class, as pynenc builds it",
    ],
)
def test_an_untested_pynenc_is_refused_wherever_the_claim_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: object
) -> None:
    monkeypatch.setattr(versions, "version", lambda name: "0.5.0")
    with pytest.raises(keyclaim.UntestedVersion) as refused:
        build(tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "pynenc 0.3.1" in message and "pynenc 0.5.0" in message


def test_the_library_never_exits_and_names_no_program_of_its_own() -> None:
    """Its refusals are exceptions a program turns into its own words."""
    for source in LIBRARY.glob("*.py"):
        text = source.read_text()
        assert "SystemExit" not in text and "sys.exit" not in text, source.name
        assert "DEMO_" not in text, source.name


def test_importing_the_library_imports_no_pynenc_until_it_is_used() -> None:
    import subprocess
    import sys

    probe = "import sys, keyclaim; keyclaim.inspect.check_versions('atomic claim', 'sqlite');"
    probe += "print('pynenc' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "False", found.stderr


def test_the_redis_extra_installs_only_a_pair_the_claim_was_tested_with() -> None:
    """`pip install pynenc-keyclaim[redis]` into a fresh environment must resolve to versions
    keyclaim.versions accepts on Redis. With pynenc-redis pinned alone, pip took the newest
    pynenc the base range allows (0.4.0), which the claim then refused as untested."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    pins = {}
    for spec in extras["redis"]:
        requirement = Requirement(spec)
        (pin,) = requirement.specifier
        assert pin.operator == "==", spec
        pins[requirement.name] = pin.version
    assert (pins.get("pynenc"), pins.get("pynenc-redis")) in versions.TESTED["redis"], pins


def test_a_subclass_of_the_selected_runner_keeps_the_claim_and_another_runner_does_not(
    tmp_path: Path,
) -> None:
    """A runner derived from the draining runner drains too: it is accepted where install
    selected the draining runner; pynenc's ThreadRunner in its place is refused. Checked by
    mutation: with check() comparing names only (resolved != selected), the subclass was
    refused."""

    class SubclassedDrainingRunner(DrainingThreadRunner):
        """A user's own draining runner."""

    builder = PynencBuilder().app_id(unique("keyclaim")).sqlite(str(tmp_path / "c.db"))
    builder = keyclaim.install(builder, 15.0, 10.0)
    keyclaim.check(builder.custom_config(runner_cls="SubclassedDrainingRunner").build())
    with pytest.raises(keyclaim.Refused, match="runner_cls='DrainingThreadRunner'"):
        keyclaim.check(builder.custom_config(runner_cls="ThreadRunner").build())


def test_a_limit_is_declared_per_task_refused_when_it_cannot_hold_and_compared_by_the_fleet(
    tmp_path: Path,
) -> None:
    """claimapp declares call_two (2 in flight), call_rated (1 per 4 s) and call_merged (open
    to merging for 0.3 s): every process that imports it declares the same, and the fleet's
    settings name them, so a worker with another limit than the producer's is refused as
    another window is. A merge window on a task that merges nothing is refused."""
    from keyclaim import fleet, limits

    declared = limits.declared()
    assert declared["claimapp.call_two"] == limits.Limit(slots=2)
    assert declared["claimapp.call_rated"].rate == 1
    app = built(tmp_path)
    claimapp.bound(app, claimapp.provider_url)  # its tasks: an app's fleet names its own
    shown = fleet.fleet_settings(app)["limits"]
    assert "claimapp.call_two 2 in flight" in shown
    assert "claimapp.call_merged 1 in flight, open to merging for 0.3s" in shown
    bad_ones = ({"slots": 0}, {"rate": 0}, {"per": 0.0}, {"slots": True}, {"rate": True})
    for bad in (*bad_ones, {"merge": -1.0}):
        with pytest.raises(keyclaim.Refused, match="keyclaim.limit"):
            keyclaim.limit(claimapp.call_keyed, **bad)
    with pytest.raises(keyclaim.Refused, match="no running_concurrency"):
        keyclaim.limit(claimapp.call_unsafe, slots=2)
    with pytest.raises(keyclaim.Refused, match="merge=0.5 on claimapp.call_keyed, which"):
        keyclaim.limit(claimapp.call_keyed, merge=0.5)  # no registration_concurrency
    # Below @app.task, it would be given the plain function: said in one line.
    with pytest.raises(keyclaim.Refused, match="put @keyclaim.limit above @app.task"):
        keyclaim.limit(slots=2)(lambda account_id: account_id)


def test_a_wake_runners_idle_wait_grows_with_the_fleet(tmp_path: Path) -> None:
    """While nothing finishes, each of N live runners waits N x idle: the fleet looks at the
    queue about as often as one runner would (the article's D keeps collapsing with several
    workers). Checked by mutation: without the fleet's count, the wait stayed at idle and this
    failed."""
    app = built(tmp_path, runner="wake", idle=0.04)
    runner = app.runner
    runner._on_start()
    assert runner.idle_wait() == pytest.approx(0.04)  # no live runner yet: this one alone
    app.orchestrator.register_runner_heartbeats([unique("runner") for _ in range(3)], True)
    assert runner.idle_wait() == pytest.approx(0.04)  # counted every 2 s, not on each loop
    runner.counted_at = float("-inf")
    assert runner.idle_wait() == pytest.approx(0.12)
    wakes, runner.wakes = runner.wakes, None  # its listener ends, and the socket it opened goes
    wakes.close()
