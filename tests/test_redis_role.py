"""controller.redis_nodes.parse_role on real ROLE replies (tests/data/capture_role.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from captured import DATA

from controller.model import Address
from controller.redis_nodes import Role, parse_role


def replies() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / "redis_role_replies.json").read_text())
    return doc


def test_a_linked_replica_names_its_master() -> None:
    """ROLE of a replica whose link is up: its master's address (as the replica was told)."""
    doc = replies()
    assert parse_role(doc["replica_connected"]) == Role(
        "slave", Address.parse(doc["nodes"]["master"]))


def test_a_master_or_an_unlinked_replica_names_none() -> None:
    """A master, and a replica whose master is gone (`connect`), are linked to nothing."""
    doc = replies()
    assert parse_role(doc["master"]) == Role("master")
    assert parse_role(doc["replica_master_down"]) == Role("slave")


@pytest.mark.parametrize("reply", [[], [1, 2], ["slave", "h"], ["slave", "h", "port", "x"],
                                   "master", None])
def test_garbage_is_a_value_error(reply: Any) -> None:
    """A reply of another shape is refused with the reply in the message."""
    with pytest.raises(ValueError, match="unexpected ROLE reply"):
        parse_role(reply)
