"""The scenario table with D alone, for tools.stress --scenarios dedupe_only:SCENARIOS."""

import enqueue

SCENARIOS = {"dedupe": enqueue.SCENARIOS["dedupe"]}
