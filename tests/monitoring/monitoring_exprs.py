"""Read every PromQL expression out of monitoring/ (dashboard and rules) for the tests.

Shared by the config test (names only, no Prometheus) and the live tests (each expression
evaluated by a real Prometheus), so both check exactly the same set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "dtnbus" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "dtnbus.json"
RULES_DIR = MONITORING / "rules"

# What Grafana substitutes before a query reaches Prometheus. `$__rate_interval` is at least
# four scrape intervals; 1m covers a short test run and still holds >= 2 samples at 1s.
GRAFANA_SUBSTITUTIONS = {"$__rate_interval": "1m", "$cluster": ".*", "$node": ".*", "$phase": ".*"}


@dataclass(frozen=True)
class Expr:
    """One PromQL expression and where it came from (for failure messages)."""

    where: str
    promql: str
    kind: str  # "panel", "record" or "alert"


def dashboard() -> dict[str, Any]:
    """The dashboard JSON as Grafana would load it."""
    return json.loads(DASHBOARD.read_text())


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def substitute(expr: str) -> str:
    """The query Prometheus receives once Grafana has expanded its variables."""
    for name, value in sorted(GRAFANA_SUBSTITUTIONS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    if "$" in expr:
        raise AssertionError(f"unsubstituted Grafana variable in {expr!r}")
    return expr


def dashboard_exprs() -> list[Expr]:
    """Every panel target's expr, with Grafana variables substituted."""
    found = []
    for panel in iter_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target.get('refId')}"
            found.append(Expr(where, substitute(target["expr"]), "panel"))
    return found


def variable_selectors() -> list[Expr]:
    """The series selectors inside the dashboard's `label_values(SELECTOR, label)` queries."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
        assert match, f"variable {variable['name']}: unexpected query {text!r}"
        found.append(Expr(f"variable {variable['name']!r}", substitute(match[1]), "panel"))
    return found


def rule_groups() -> list[dict[str, Any]]:
    """Every rule group from dtnbus/monitoring/rules/*.yml."""
    groups = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def rule_exprs() -> list[Expr]:
    """Every recording and alerting rule's expr."""
    found = []
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                found.append(Expr(f"record {rule['record']}", rule["expr"], "record"))
            else:
                found.append(Expr(f"alert {rule['alert']}", rule["expr"], "alert"))
    return found


def recorded_names() -> set[str]:
    """Series names the recording rules create (valid in later expressions)."""
    rules = [rule for group in rule_groups() for rule in group["rules"]]
    return {rule["record"] for rule in rules if "record" in rule}


_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, good for our rules).

    Strings, label matchers `{...}`, ranges `[...]` and label lists after by/without/on/
    ignoring/group_* are removed; what remains that is an identifier not followed by `(`
    (a function or aggregation) and not a keyword is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', promql)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )
    names = set()
    # Not preceded by a digit or dot: the "m" of "5m" or the "e" of "1e3" is not a name.
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        rest = text[match.end():].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names
