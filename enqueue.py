"""Enqueue one scenario, or all four, against a running API and worker; print what happened.

Run it: uv run python enqueue.py all      (or unsafe, keyed, drop, dedupe; or noisy, slots,
rate, tiers: not in all; slots, rate and tiers with DEMO_ATOMIC_CLAIM=1)
"""

import sys

from demo import checks, flags, settings, show, steps, tiers
from demo.outcome import Outcome
from demo.scenarios import Scenario, limited_ops, noisy_neighbour, refresh_bursts
from demo.show import View
from demo.steps import Stage

with checks.refused_in_one_line():  # a bad DEMO_* setting, or a claim refused: one line, exit 2
    import tasks

# The scenarios, as the article tells them: what each sends, through which task. What each
# promises follows from its task's settings (demo/scenarios.py).
SCENARIOS = {
    s.key: s
    for s in (
        Scenario("A", "unsafe", "no concurrency control", tasks.call_unsafe),
        Scenario("B", "keyed", "running_concurrency=KEYS, reroute=True", tasks.call_keyed),
        Scenario("C", "drop", "running_concurrency=KEYS, reroute=False", tasks.call_keyed_drop),
        Scenario("D", "dedupe", "registration + running KEYS", tasks.refresh_once, refresh_bursts),
        # Beyond the article: one busy account beside quiet ones; then, with the claim, up to
        # SLOTS calls in flight per account, and at most RATE calls per PER seconds.
        Scenario(
            "E",
            "noisy",
            "one busy account beside quiet ones, KEYS",
            tasks.call_keyed,
            noisy_neighbour,
            measure=True,
        ),
        Scenario(
            "F",
            "slots",
            f"up to {tasks.SLOTS} in flight per account (keyclaim.limit)",
            tasks.call_slots,
            limited_ops,
        ),
        Scenario(
            "G",
            "rate",
            f"at most {tasks.RATE} calls per {tasks.PER:g}s per account, {tasks.SLOTS} in flight",
            tasks.call_rated,
            limited_ops,
        ),
        Scenario(
            "H",
            "tiers",
            "two accounts at 3 in flight, four at 1 (a rule); two changed mid-run",
            tasks.call_tiered,
            tiers.tier_calls,
            tiers=tasks.tier,
        ),
    )
}
ARTICLE = [SCENARIOS[key] for key in ("unsafe", "keyed", "drop", "dedupe")]


def run(scenario: Scenario, stage: Stage, view: View) -> Outcome:
    """One scenario: reset the provider, enqueue its calls, wait for them, show what happened."""
    stage.provider.reset(scenario.heading, stage.shape.hold, **scenario.quota)
    sent = steps.enqueue(scenario, stage.shape)
    steps.wait(sent, stage, scenario.label)
    return show.outcome(steps.outcome(sent, stage.provider), view)


def play(chosen: list[Scenario], stage: Stage, view: View) -> list[Outcome]:
    """Each scenario in turn; it stops at one that left work unfinished, which would otherwise
    run inside the next."""
    outcomes = []
    for scenario in chosen:
        outcomes.append(outcome := run(scenario, stage, view))
        if outcome.invocations and not outcome.calls and not outcome.unfinished:
            print(f"  {checks.elsewhere(stage.provider.base_url)}", flush=True)
        if outcome.unfinished:
            print(f"  gave up: {checks.cancel_unpicked(scenario)}", flush=True)
            break
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = flags.enqueue_parser([*SCENARIOS, "all"], __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.atomic_claim and settings.get("DEMO_ATOMIC_CLAIM") != "1":
        parser.error(
            "--atomic-claim: tasks.py reads the claim from the environment, in every process "
            "that enqueues or runs: set DEMO_ATOMIC_CLAIM=1 in this terminal and the workers'"
        )
    chosen = ARTICLE if args.scenario == "all" else [SCENARIOS[args.scenario]]
    # Every check first, each refused in one line with its exit code: an API, a worker on
    # this state with the same claim settings, no other run, nothing an earlier run left.
    return checks.checked(args, chosen, SCENARIOS.values(), play)


if __name__ == "__main__":
    sys.exit(main())
