"""The quiet trigger on Redis: pynenc-redis's, with no lookups while no task is a source.

Selected by class name (trigger_cls="QuietRedisTrigger") with the claim on Redis
(keyclaim.install). Written and tested against pynenc 0.3.1 with pynenc-redis 0.3.0
(keyclaim.versions); retired with keyclaim.quiet.
"""

from typing import TYPE_CHECKING

from pynenc_redis.trigger.redis_trigger import RedisTrigger

from keyclaim.quiet import Quiet

if TYPE_CHECKING:
    from pynenc.identifiers.task_id import TaskId


class QuietRedisTrigger(Quiet, RedisTrigger):
    """Its look at the store, in one EXISTS: the mark a claim process's registration leaves, or
    any task this process knows being some condition's source (a stock process leaves no mark).
    pynenc knows a task once its module is imported or a call of it is read."""

    known = 0  # the tasks this process knew at its last look

    def any_sourced(self) -> bool:
        """A task learnt since the last look (its module imported as a call of it is read) may
        be a source already: look again now, not a second later, past its first reports."""
        if not self.sourced and len(self.app.tasks) != self.known:
            self.known, self.read_at = len(self.app.tasks), float("-inf")
        return super().any_sourced()

    def _register_source_task_condition(self, task_id: "TaskId", condition_id: str) -> None:
        """pynenc-redis's, and a mark that some task is a source, found by a process that does
        not know the task: its sweep reports a dead runner's call by its id alone."""
        super()._register_source_task_condition(task_id, condition_id)
        self.client.set(self._mark, 1)

    def sourced_in_store(self) -> bool:
        known = tuple(self.app.tasks)  # at once: another thread may learn a task meanwhile
        keys = [self.key.source_task_conditions(task_id.key) for task_id in known]
        return bool(self.client.exists(self._mark, *keys))

    @property
    def _mark(self) -> str:
        return self.key.prefix + "sourced"  # under the trigger's prefix: purged with it
