"""Flower's in-memory LinkState with undelivered messages indexed by destination node: the simulation engine then
costs a constant per node and poll instead of a scan of every stored message.

The cause (flwr 1.41, unchanged in 1.42 and the 1.43 nightlies): the simulation engine's
``vce_api.add_messages_to_queue`` asks the state for each node's next message, for every node, every 0.1 s, and
``InMemoryLinkState.get_message_ins`` answers each call by walking the whole ``message_ins_store`` (expiry check
included) under the state's lock. A round of N farmers stores N messages, so one sweep over the nodes is N x N
look-ups, repeated ten times a second for the whole round, and the server's and the workers' threads wait on the
same lock: time per round grows with the square of the number of farmers (3.5 s at 50 farmers, 300 s at 500 in the
committed benchmark). ``docs/flower_linkstate_index.md`` gives the measurements and the same change as a patch
against Flower's file, so that it can be offered upstream.

:class:`IndexedInMemoryLinkState` keeps, for every destination node, the ids of its messages not delivered yet, in
the order they were stored; ``get_message_ins`` walks only the asking node's ids and applies Flower's own checks
(expiry and federation membership, the run filter, ``delivered_at``) to each, so it returns the same messages in the
same order as Flower's scan. Ids leave the index when delivered or deleted; an id whose message is gone (expired and
removed by Flower's own sweeps) is dropped when its node next asks. :func:`indexed_link_state` makes Flower's
``LinkStateFactory`` build this class for the duration of a ``with`` block (what :func:`fedpeft.federated.flower_engine.
run_flower` does); nothing else of Flower is changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.server.superlink.linkstate import in_memory_linkstate, linkstate_factory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

__all__ = ["IndexedInMemoryLinkState", "SimulatedFederation", "indexed_link_state"]


class IndexedInMemoryLinkState(InMemoryLinkState):
    """``InMemoryLinkState`` whose ``get_message_ins`` looks only at the asking node's undelivered messages."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.undelivered_by_node: dict[int, dict[str, None]] = {}  # node id -> ids of its undelivered messages, in order

    def store_message_ins(self, message: Message) -> str | None:
        """Store one message as Flower does and, if stored and undelivered, index it under its destination node."""
        with self.lock:
            message_id = super().store_message_ins(message)
            stored = self.message_ins_store.get(message_id) if message_id is not None else None
            if stored is not None and stored.metadata.delivered_at == "":
                self.undelivered_by_node.setdefault(stored.metadata.dst_node_id, {})[message_id] = None
        return message_id

    def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
        """The node's messages not delivered yet (at most ``limit``, oldest first), marked delivered: Flower's answer,
        found through the index."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")  # Flower's own check and error
        found: list[Message] = []
        with self.lock:
            pending = self.undelivered_by_node.get(node_id, {})
            for message_id in list(pending):
                self._check_stored_messages({message_id})  # Flower's expiry and federation checks; may delete it
                message = self.message_ins_store.get(message_id)
                if message is None or message.metadata.delivered_at != "":
                    pending.pop(message_id, None)
                    continue
                if run_id is not None and message.metadata.run_id != run_id:
                    continue  # another run's message stays pending
                found.append(message)
                pending.pop(message_id, None)
                if limit and len(found) == limit:
                    break
            if not pending:
                self.undelivered_by_node.pop(node_id, None)
        delivered_at = in_memory_linkstate.now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
        return found

    def delete_messages(self, message_ins_ids: set[str]) -> None:
        """Delete messages and their replies as Flower does, and drop them from the index."""
        with self.lock:
            for message_id in message_ins_ids:
                if (message := self.message_ins_store.get(message_id)) is not None:
                    pending = self.undelivered_by_node.get(message.metadata.dst_node_id)
                    if pending is not None:
                        pending.pop(message_id, None)
            super().delete_messages(message_ins_ids)


@contextmanager
def indexed_link_state() -> Iterator[None]:
    """Within the block, Flower's ``LinkStateFactory`` builds :class:`IndexedInMemoryLinkState` for its in-memory
    state (the simulation engine's); the factory's own class is restored on leaving, also after an error."""
    original = linkstate_factory.InMemoryLinkState
    linkstate_factory.InMemoryLinkState = IndexedInMemoryLinkState
    try:
        yield
    finally:
        linkstate_factory.InMemoryLinkState = original


@dataclass
class SimulatedFederation:
    """Flower's in-memory LinkState as the simulation engine builds it (one factory, ``nodes`` registered SuperNodes,
    one record, task and grid per run), with nothing trained: what the LinkState benchmark and tests drive by hand.

    ``indexed`` picks :class:`IndexedInMemoryLinkState` or Flower's own ``InMemoryLinkState``. The first run id is the
    current one (Flower's ``TaskIdentity``, which the grids and the state read), as ``run_simulation`` sets it.
    """

    nodes: int
    indexed: bool = True
    run_ids: Sequence[int] = (7,)
    state: InMemoryLinkState = field(init=False)
    node_ids: list[int] = field(init=False)
    grids: dict = field(init=False)  # run id -> flwr InMemoryGrid

    def __post_init__(self) -> None:
        from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
        from flwr.server.superlink.linkstate import LinkStateFactory
        from flwr.simulation.run_simulation import NOOP_FEDERATION_ID, RunRecord, Task
        from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.supercore.run import Run
        from flwr.supercore.task_identity import TaskIdentity
        from flwr.superlink.federation import NoOpFederationManager
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid

        TaskIdentity.task_id, TaskIdentity.node_id = 1, 1
        with indexed_link_state() if self.indexed else contextlib.nullcontext():
            factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
            self.state = factory.state()
        for run_id in self.run_ids:
            run = Run.create_empty(run_id=run_id)
            run.primary_task_id, run.federation_id = 100 + run_id, NOOP_FEDERATION_ID
            self.state.run_ids[run_id] = RunRecord(run=run)
            self.state.task_store[100 + run_id] = Task(task_id=100 + run_id, run_id=run_id)
        self.node_ids = list(_register_nodes(self.nodes, factory))
        self.grids = {}
        for run_id in self.run_ids:
            TaskIdentity.run_id = run_id
            self.grids[run_id] = InMemoryGrid(state_factory=factory)
            self.grids[run_id].set_run(self.state.run_ids[run_id].run)
        TaskIdentity.run_id = self.run_ids[0]

    @contextmanager
    def current_run(self, run_id: int | None) -> Iterator[int]:
        """Within the block, ``run_id`` (the first run's by default) is Flower's current run: messages built there
        belong to it. Yields the run id."""
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id = self.run_ids[0] if run_id is None else run_id
        try:
            yield TaskIdentity.run_id
        finally:
            TaskIdentity.run_id = self.run_ids[0]

    def push(self, build_messages, run_id: int | None = None) -> list[str]:
        """Store the messages that ``build_messages()`` returns through ``run_id``'s grid (the first run's by default),
        as the server does; their ids. Flower's ``Message`` takes its run from the current one when it is built, hence
        a builder rather than messages."""
        with self.current_run(run_id) as current:
            return list(self.grids[current].push_messages(build_messages()))
