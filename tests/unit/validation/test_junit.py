"""JUnit XML from pytest and node --test; hostile XML is refused."""

from __future__ import annotations

import pytest
from defusedxml import ElementTree

from qlp.validation.junit import (
    EMPTY_JUNIT,
    JUnitError,
    TestsSummary,
    combine,
    merge_junit,
    parse_junit,
    synthetic_failure,
)

PYTEST_XUNIT1 = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="0.1">
<testcase classname="tests.test_ops" name="test_add" file="tests/test_ops.py" line="3"
  time="0.001"/>
<testcase classname="tests.test_ops.TestHalf" name="test_half" file="tests/test_ops.py" line="7"
  time="0.002"><failure message="AssertionError: half of one&#10;assert 0.5 == 2">def test_half():
&gt;       assert half(1) == 2
E       AssertionError: half of one</failure></testcase>
<testcase classname="tests.test_io" name="test_read" file="tests/test_io.py" line="1" time="0">
  <error message="failed on setup with &quot;FileNotFoundError&quot;">setup trace</error></testcase>
<testcase classname="tests.test_io" name="test_skip" file="tests/test_io.py" line="9" time="0">
  <skipped type="pytest.skip" message="later">skip</skipped></testcase>
<testcase classname="tests.test_io" name="test_ok" file="tests/test_io.py" line="12" time="0"/>
</testsuite></testsuites>"""

NODE = """<?xml version="1.0" encoding="utf-8"?>
<testsuites>
\t<testcase name="adds" time="0.001" classname="test"/>
\t<testcase name="breaks" time="0.002" classname="test" failure="2 !== 3">
\t\t<failure type="testCodeFailure"
\t\t  message="Expected values to be strictly equal:2 !== 3">trace</failure>
\t</testcase>
</testsuites>"""


def test_pytest_report() -> None:
    s = parse_junit(PYTEST_XUNIT1)
    assert (s.passed, s.failed, s.errors, s.skipped, s.ran) == (2, 1, 1, 1, True)
    half, setup = s.failures
    assert half.test_id == "tests/test_ops.py::TestHalf::test_half"
    assert (half.kind, half.path, half.line) == ("failure", "tests/test_ops.py", 8)
    assert half.message.startswith("AssertionError: half of one")
    assert "assert half(1) == 2" in half.text
    assert (setup.test_id, setup.kind) == ("tests/test_io.py::test_read", "error")


def test_node_report_and_merge() -> None:
    node = parse_junit(NODE)
    assert (node.passed, node.failed) == (1, 1)
    assert node.failures[0].test_id == "breaks"
    both = combine([parse_junit(PYTEST_XUNIT1), node], coverage=71.5)
    assert (both.passed, both.failed, both.errors, both.skipped) == (3, 2, 1, 1)
    assert both.coverage_percent == 71.5
    merged = ElementTree.fromstring(both.junit_xml)
    assert merged.tag == "testsuites"
    assert len(list(merged.iter("testcase"))) == 7
    assert len(list(merged.iter("testsuite"))) == 2


def test_nothing_ran() -> None:
    assert combine([], None) == TestsSummary()
    root = ElementTree.fromstring(EMPTY_JUNIT)
    assert root.find("testsuite").get("tests") == "0"  # type: ignore[union-attr]


def test_synthetic_failure_is_one_error_with_a_valid_report() -> None:
    s = synthetic_failure("pytest", "the tests did not finish in 300 s", "output tail")
    assert (s.errors, s.ran, s.failures[0].test_id) == (1, True, "pytest")
    root = ElementTree.fromstring(s.junit_xml)
    assert root.find("testsuite/testcase/error").get("message").startswith("the tests")  # type: ignore[union-attr]


def test_entity_expansion_is_refused() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><testsuites>&b;</testsuites>'
    )
    with pytest.raises(JUnitError):
        parse_junit(bomb)
    with pytest.raises(JUnitError):
        parse_junit("<testsuites><testcase")
    assert "testsuite" in merge_junit(["not xml", NODE])
