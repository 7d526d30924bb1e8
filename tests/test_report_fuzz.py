"""Nothing a report.json contains makes gradscope fail unexpectedly: a mutated report is refused in one line
(UsageError, exit 2) or read and rendered in every format."""

from __future__ import annotations

import copy
import json
import random
import re

import pytest

import report_fixtures as rf
from gradscope.errors import UsageError
from gradscope.report import RENDERERS, Report

REPLACEMENTS = (None, True, -1, 0, 2**70, 1e308, -1e308, 5e-324, "", "x\x1b[2J", [], [1, "a"], {}, {"a": None})
MUTATIONS = 150  # per report kind; seeded, so a failure reproduces


def _paths(value, prefix=()):
    """Every path to a value in nested JSON data."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


def _mutate(data, rng: random.Random):
    """A copy of ``data`` with one value replaced or one key removed, and what was done."""
    data = copy.deepcopy(data)
    path = rng.choice([p for p in _paths(data) if p])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[path[-1]]
        return data, f"removed {path}"
    value = rng.choice(REPLACEMENTS)
    parent[path[-1]] = copy.deepcopy(value)
    return data, f"{path} = {value!r}"


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    from gradscope.compare import compare_reports

    root = tmp_path_factory.mktemp("fuzz")
    analysis = rf.demo_report(depth=3)
    analysis.save(root / "a", formats="json")
    monitor = rf.monitor_report(steps=6, depth=3)
    comparison = compare_reports([root / "a", root / "a"], labels=("x", "y"))
    return {"analysis": analysis.to_dict(), "monitor": monitor.to_dict(), "comparison": comparison.to_dict()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["analysis", "monitor", "comparison"])
def test_a_mutated_report_is_refused_in_one_line_or_rendered_in_every_format(originals, tmp_path, kind):
    rng = random.Random(f"gradscope-fuzz-{kind}")
    formats = [f for f in RENDERERS if f != "png"]  # png: matplotlib's, and slow; its specs are the svg's
    refused = rendered = 0
    for i in range(MUTATIONS):
        data, change = _mutate(originals[kind], rng)
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(data))
        try:
            report = Report.load(path)
        except UsageError as exc:
            assert "\n" not in str(exc), change
            refused += 1
            continue
        for fmt in formats:
            try:
                RENDERERS[fmt](report)
            except Exception as exc:  # the point is that nothing escapes
                raise AssertionError(f"{kind}: {change}: rendering {fmt} raised {type(exc).__name__}: {exc}") from exc
        rendered += 1
    assert refused > 0 and rendered > 0  # the mutations reach both outcomes


def _set(path, value):
    def change(data):
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if value is _REMOVE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return change


_REMOVE = object()


@pytest.mark.parametrize("kind, change, says", [  # what the fuzzing above found, each once
    ("monitor", _set(("series", 3, "depth"), _REMOVE), "series[3] has no 'depth'"),
    ("monitor", _set(("series", 3, "depth"), None), "series[3] is block '3' at no depth"),
    ("analysis", _set(("meta", "versions"), 5e-324), "meta.versions is a number (5e-324), not an object or null"),
    ("analysis", _set(("meta", "versions", "torch"), [1]), "meta.versions.torch is a list ([1]), not a string"),
    ("analysis", _set(("summaries", 0, "decay", "shape"), "x"), "summaries[0].decay.shape 'x' is not one of flat"),
    ("analysis", _set(("summaries", 0, "decay", "shape"), "step"), "summaries[0].decay.shape_at"),
])
def test_what_the_fuzzing_found_is_refused_with_what_is_wrong(originals, tmp_path, kind, change, says):
    data = copy.deepcopy(originals[kind])
    change(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=f"is not a gradscope report: {re.escape(says)}"):
        Report.load(path)
