"""The indexed in-memory LinkState answers every ``get_message_ins`` exactly as Flower's own scan (same messages, same
order, same expiry and run filtering), touches only the asking node's messages, and is what Flower's factory builds
inside :func:`indexed_link_state` only."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402
from flwr.server.superlink.linkstate import LinkStateFactory, linkstate_factory  # noqa: E402
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState  # noqa: E402
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME  # noqa: E402
from flwr.supercore.object_store import ObjectStoreFactory  # noqa: E402
from flwr.superlink.federation import NoOpFederationManager  # noqa: E402

from fedpeft.federated.linkstate_index import IndexedInMemoryLinkState, SimulatedFederation, indexed_link_state  # noqa: E402

RUN_ID, OTHER_RUN_ID = 7, 8


class Federation(SimulatedFederation):
    """A state as the simulation engine builds it, with two runs; messages addressed by node position and tagged."""

    def __init__(self, indexed: bool, nodes: int) -> None:
        super().__init__(nodes, indexed, run_ids=(RUN_ID, OTHER_RUN_ID))
        self.nodes = self.node_ids

    def push_tag(self, node: int, tag: str, run_id: int = RUN_ID, ttl: float | None = None) -> str:
        """Store a message for the ``node``-th SuperNode carrying ``tag``; returns its id."""
        kwargs = {"ttl": ttl} if ttl is not None else {}
        (message_id,) = self.push(
            lambda: [Message(RecordDict({"c": ConfigRecord({"tag": tag})}), dst_node_id=self.nodes[node], message_type="train", **kwargs)],
            run_id=run_id,
        )
        return message_id

    def poll(self, node: int, limit: int | None = 1, run_id: int | None = None) -> list[str]:
        """The tags of what the ``node``-th SuperNode receives now."""
        return [m.content["c"]["tag"] for m in self.state.get_message_ins(node_id=self.nodes[node], limit=limit, run_id=run_id)]


def _script(federation: Federation) -> list:
    """One fixed sequence of stores, deletions and polls; returns everything the nodes received, in order."""
    seen = []
    for node in range(4):
        for k in range(3):
            federation.push_tag(node, f"n{node}m{k}")
    federation.push_tag(1, "other-run", run_id=OTHER_RUN_ID)
    federation.push_tag(2, "expired", ttl=0.05)  # expires before anyone asks (below): Flower's check drops it
    doomed = federation.push_tag(3, "deleted")
    federation.state.delete_messages({doomed})
    time.sleep(0.1)
    seen.append(federation.poll(0))                       # oldest first, one at a time
    seen.append(federation.poll(0, limit=None))           # the rest
    seen.append(federation.poll(0))                       # nothing left
    seen.append(federation.poll(1, limit=None, run_id=RUN_ID))  # the other run's message stays
    seen.append(federation.poll(1, limit=None, run_id=OTHER_RUN_ID))
    seen.append(federation.poll(1, limit=None))
    seen.append(federation.poll(2, limit=2))
    seen.append(federation.poll(2, limit=5))              # the expired one never arrives
    seen.append(federation.poll(3, limit=None))           # the deleted one never arrives
    federation.push_tag(0, "late")
    seen.append(federation.poll(0, limit=None))
    seen.append([federation.poll(n) for n in range(4)])   # an idle sweep
    return seen


def test_indexed_state_answers_as_flowers_scan():
    flower, indexed = _script(Federation(False, 4)), _script(Federation(True, 4))
    assert indexed == flower
    assert flower[0] == ["n0m0"] and flower[1] == ["n0m1", "n0m2"] and flower[2] == []
    assert flower[3] == ["n1m0", "n1m1", "n1m2"] and flower[4] == ["other-run"]
    assert flower[7] == ["n2m2"] and flower[8] == ["n3m0", "n3m1", "n3m2"] and flower[9] == ["late"]


def test_limit_below_one_is_refused_as_flower_does():
    federation = Federation(True, 1)
    with pytest.raises(AssertionError, match="limit"):
        federation.state.get_message_ins(node_id=federation.nodes[0], limit=0)


@pytest.mark.parametrize("indexed, checks_per_sweep", [(False, 20 * 21 // 2), (True, 20)])
def test_a_sweep_checks_each_message_once_with_the_index_and_every_message_per_node_without(indexed, checks_per_sweep, monkeypatch):
    """One message per node, then one poll per node (the engine's sweep): Flower's scan checks stored messages until
    it meets the node's own (N (N + 1) / 2 in all), the index only the node's own (N); an idle sweep then checks every
    stored message for every node without the index (N x N) and none with it."""
    nodes = 20
    federation = Federation(indexed, nodes)
    for node in range(nodes):
        federation.push_tag(node, f"m{node}")
    checked = []
    original = InMemoryLinkState._check_stored_messages

    def counting(self, message_ids, run_id=None):
        checked.append(len(message_ids))
        return original(self, message_ids, run_id)

    monkeypatch.setattr(InMemoryLinkState, "_check_stored_messages", counting)
    assert [federation.poll(n) for n in range(nodes)] == [[f"m{n}"] for n in range(nodes)]
    assert sum(checked) == checks_per_sweep
    checked.clear()
    assert [federation.poll(n) for n in range(nodes)] == [[] for _ in range(nodes)]
    assert sum(checked) == (0 if indexed else nodes * nodes)  # delivered messages stay stored until their replies are pulled
    if indexed:
        assert federation.state.undelivered_by_node == {}


def test_factory_builds_the_indexed_state_only_inside_the_block():
    original = linkstate_factory.InMemoryLinkState
    with indexed_link_state():
        inside = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
    outside = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
    assert type(inside) is IndexedInMemoryLinkState and type(outside) is InMemoryLinkState
    with pytest.raises(RuntimeError), indexed_link_state():
        raise RuntimeError("a simulation that fails")
    assert linkstate_factory.InMemoryLinkState is original
