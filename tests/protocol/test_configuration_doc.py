"""docs/configuration.md documents every setting the cluster file accepts, with a default
that matches the code: the reference cannot drift from what a node really reads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dtnbus.config import PROTOCOL_FIELDS, SHAPING_FIELDS, ClientSpec, NodeSpec
from dtnbus.replica import ReplicaConfig

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def _section(title: str) -> dict[str, list[str]]:
    """The table rows of one '## title' section: key -> cells."""
    body = DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z_]+)`", cells[0]) if cells else None
        if match:
            rows[match.group(1)] = cells
    return rows


def test_every_protocol_field_is_documented_with_its_default() -> None:
    rows = _section("`[protocol]`")
    assert set(rows) == PROTOCOL_FIELDS
    for field in dataclasses.fields(ReplicaConfig):
        if field.name in PROTOCOL_FIELDS:
            default = rows[field.name][2].replace(",", "")
            assert default == str(field.default).lower(), (field.name, default, field.default)


def test_every_node_key_and_shaping_key_is_documented() -> None:
    node_keys = {f.name for f in dataclasses.fields(NodeSpec)}
    assert set(_section("`[[nodes]]`")) == node_keys
    assert set(_section("`[shaping]`")) == SHAPING_FIELDS
    assert set(_section("`[[clients]]`")) == {f.name for f in dataclasses.fields(ClientSpec)}
    assert set(_section("`[admission]`")) == {"open"}


@pytest.mark.parametrize("doc", ["deploy.md", "configuration.md"])
def test_docs_link_only_inside_the_repository(doc: str) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / doc).read_text()
    assert "../shared" not in text and "/work/" not in text


def test_the_storage_section_documents_durability() -> None:
    from dtnbus.config import DURABILITY

    rows = _section("`[storage]`")
    assert set(rows) == {"durability"} and all(d in rows["durability"][1] for d in DURABILITY)
