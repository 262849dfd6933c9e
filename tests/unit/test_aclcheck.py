"""Unit tests of the ACL permissions each mode needs for a host's services (the
modes' ``acl_needs``) and of the lines ``check-config --online`` prints for Consul's
answers (``jailsyncd.aclcheck``)."""

from __future__ import annotations

import pytest

from jailsyncd.aclcheck import EXAMPLE_NODE, EXAMPLE_SERVICE, Need, findings
from jailsyncd.adapters.consul import ConsulAgent, ConsulCatalog
from records import agent_record, catalog_record

from jailsyncd.model import Record


def svc(name: str, node: str = "") -> Record:
    return catalog_record(name, node) if node else agent_record(name)


def asked(found: list[Need]) -> list[tuple[str, str, str, bool]]:
    return [(n.resource, n.segment, n.access, n.required) for n in found]


def test_agent_mode_needs_service_write_on_every_name_and_no_node_write():
    found = ConsulAgent.acl_needs([svc("web1"), svc("www"), svc("jailsyncd")], owned=[svc("old1"), svc("www")])
    assert asked(found) == [
        ("service", "jailsyncd", "write", True),
        ("service", "old1", "write", True),  # deregistering needs the old name
        ("service", "web1", "write", True),
        ("service", "www", "write", True),
        ("service", EXAMPLE_SERVICE, "write", False),  # a jail created later: a note
        ("agent", "", "read", False),  # the Consul watch: a note
        ("node", "", "read", False),
    ]
    assert not [n for n in found if n.resource == "node" and n.access == "write"]


def test_catalog_mode_needs_node_write_and_service_write_and_notes_node_read():
    found = ConsulCatalog.acl_needs([svc("web1", "web1.example.org"), svc("jail", "db1.example.org")], owned=[svc("old", "old1.example.org")])
    assert asked(found) == [
        ("service", "jail", "write", True),
        ("service", "web1", "write", True),
        ("node", "db1.example.org", "write", True),
        ("node", "old1.example.org", "write", True),  # deleting a node: node write only
        ("node", "web1.example.org", "write", True),
        ("service", EXAMPLE_SERVICE, "write", False),
        ("node", EXAMPLE_NODE, "write", False),
        ("node", "", "read", False),
    ]


@pytest.mark.parametrize("desired", [None, []])
def test_unknown_or_no_names_ask_for_example_names_as_required(desired):
    assert asked(ConsulAgent.acl_needs(desired)) == [("service", EXAMPLE_SERVICE, "write", True), ("agent", "", "read", False), ("node", "", "read", False)]
    assert asked(ConsulCatalog.acl_needs(desired)) == [
        ("service", EXAMPLE_SERVICE, "write", True),
        ("node", EXAMPLE_NODE, "write", True),
        ("node", "", "read", False),
    ]


def test_findings_one_line_per_group_naming_what_is_missing():
    names = [f"j{i:02}" for i in range(8)]
    found = [Need("service", n, "write", "service:write on this host's service names") for n in names]
    found += [Need("service", EXAMPLE_SERVICE, "write", "service:write on the name of a jail created later", required=False)]
    found += [Need("node", "", "read", "node:read on every node", required=False)]
    allowed = [True, False, True, False, False, False, False, False, False, True]
    assert findings(found, allowed) == [
        (False, "service:write on this host's service names: MISSING on 6 of 8: 'j01', 'j03', 'j04', 'j05', 'j06' and 1 more"),
        (None, "service:write on the name of a jail created later: not granted ('example-jail'): a new jail is refused unless the policy gets its name too"),
        (True, "node:read on every node: allowed"),
    ]


def test_findings_all_allowed_lists_the_names():
    found = [Need("service", n, "write", "g") for n in ("a", "b")]
    assert findings(found, [True, True]) == [(True, "g: allowed ('a', 'b')")]


def test_findings_needs_one_answer_per_need():
    with pytest.raises(ValueError):
        findings([Need("service", "a", "write", "g")], [])
