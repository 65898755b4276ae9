"""No trigger lookups for an app whose tasks are no trigger's source.

On every status change pynenc's trigger reads the invocation back and asks the store for the
conditions sourced from its task, even in an app with no trigger. The quiet triggers answer
"none" without reading until a condition is sourced from a task (pynenc's own cron triggers are
sourced from none): keyclaim/README.md, "SQLite connections opened once". QuietSQLiteTrigger is
selected by class name with `keyclaim.keep_connections`; its Redis twin
(keyclaim.quiet_redis) with the claim on Redis. Written and tested against pynenc 0.3.1 and
0.4.0, and pynenc-redis 0.3.0 (keyclaim.versions). The upstream change that retires them:
`BaseTrigger.report_tasks_status` asks for the task's conditions first, from an index kept in
memory (the repo's docs/upstream.md, section 6).
"""

import time
from typing import TYPE_CHECKING, Any

from keyclaim.connections import KeptSQLiteTrigger, kept_connection

if TYPE_CHECKING:
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.invocation.status import InvocationStatus

RECHECK = 1.0  # seconds between reads of the store while no condition is sourced from a task


class Quiet:
    """Mixed in before one of pynenc's triggers: its reports, only once a task is a source."""

    _source_task_conditions: dict

    def __init__(self, app: Any) -> None:
        super().__init__(app)  # type: ignore[call-arg]
        self.sourced, self.read_at, self.reads = False, float("-inf"), 0

    def any_sourced(self) -> bool:
        """Whether some condition is sourced from some task: once true, it stays true."""
        if self.sourced:
            return True
        if any(self._source_task_conditions.values()):
            self.sourced = True  # registered by this process (a runner, as it starts)
        elif time.monotonic() - self.read_at >= RECHECK:
            self.read_at, self.reads = time.monotonic(), self.reads + 1
            self.sourced = self.sourced_in_store()
        return self.sourced

    def sourced_in_store(self) -> bool:
        """Whether the store holds a condition sourced from a task: one read."""
        raise NotImplementedError

    def report_tasks_status(
        self, invocation_ids: list["InvocationId"], status: "InvocationStatus | None" = None
    ) -> None:
        if self.any_sourced():
            super().report_tasks_status(invocation_ids, status)  # type: ignore[misc]

    def report_invocation_result(self, invocation: "DistributedInvocation", result: Any) -> None:
        if self.any_sourced():
            super().report_invocation_result(invocation, result)  # type: ignore[misc]

    def report_invocation_failure(
        self, invocation: "DistributedInvocation", exception: Exception
    ) -> None:
        if self.any_sourced():
            super().report_invocation_failure(invocation, exception)  # type: ignore[misc]


class QuietSQLiteTrigger(Quiet, KeptSQLiteTrigger):
    """pynenc's SQLite trigger, kept connections, no lookups while no task is a source."""

    def sourced_in_store(self) -> bool:
        table = self.tables.SOURCE_TASK_CONDITIONS
        with kept_connection(self.sqlite_db_path) as conn:
            return conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
