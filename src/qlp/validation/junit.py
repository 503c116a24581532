"""JUnit XML (pytest's and node --test's) -> counts and failures; several reports -> one.

The XML is written by code under test, so it is parsed with defusedxml (no entity expansion,
no external entities) and every attribute is treated as untrusted text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from defusedxml import ElementTree as SafeET

EMPTY_JUNIT = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<testsuites tests="0" failures="0" errors="0" skipped="0">'
    '<testsuite name="qlp" tests="0" failures="0" errors="0" skipped="0" time="0" />'
    "</testsuites>\n"
)


@dataclass(frozen=True)
class TestFailure:
    __test__ = False  # not a pytest test class, whatever its name

    test_id: str  # "tests/test_x.py::test_name" (pytest) or "classname::name"
    kind: str  # "failure" | "error"
    message: str  # the assertion message (first lines)
    text: str  # the traceback, trimmed
    path: str | None = None  # the test's file, project-relative, when known
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id,
            "kind": self.kind,
            "message": self.message,
            "path": self.path,
            "line": self.line,
        }


@dataclass(frozen=True)
class TestsSummary:
    __test__ = False  # not a pytest test class, whatever its name

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    coverage_percent: float | None = None
    failures: tuple[TestFailure, ...] = ()
    junit_xml: str = EMPTY_JUNIT
    ran: bool = False  # some test runner ran at least one test

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "errors": self.errors,
            "skipped": self.skipped,
            "coverage_percent": self.coverage_percent,
            "failures": [f.to_dict() for f in self.failures],
        }


class JUnitError(ValueError):
    pass


def _trim(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


_PY_CLASS = re.compile(r"^[A-Za-z_][\w.]*$")


def _test_id(case: Element) -> tuple[str, str | None, int | None]:
    name = case.get("name", "?")
    file = case.get("file")
    line_raw = case.get("line", "")
    line = int(line_raw) + 1 if line_raw.isdigit() else None  # pytest's line is 0-based
    classname = case.get("classname", "")
    if file:
        path = file.removeprefix("./")
        # classname "tests.test_x.TestThing" -> keep the class part after the module
        module = path[:-3].replace("/", ".") if path.endswith(".py") else ""
        cls = classname[len(module) + 1 :] if module and classname.startswith(module + ".") else ""
        return f"{path}::{cls + '::' if cls else ''}{name}", path, line
    if classname and _PY_CLASS.match(classname) and classname != "test":
        return f"{classname}::{name}", None, line
    return name, None, line


def parse_junit(xml_text: str, *, max_failure_chars: int = 2000) -> TestsSummary:
    """Counts every <testcase> (with or without <testsuite> around it)."""
    try:
        root = SafeET.fromstring(xml_text.encode("utf-8"))
    except Exception as exc:  # defusedxml raises its own errors besides ParseError
        raise JUnitError(f"the JUnit XML does not parse: {exc}") from None
    passed = failed = errors = skipped = 0
    failures: list[TestFailure] = []
    for case in root.iter("testcase"):
        bad = case.find("failure")
        kind = "failure"
        if bad is None:
            bad = case.find("error")
            kind = "error"
        if bad is not None:
            test_id, path, line = _test_id(case)
            if kind == "failure":
                failed += 1
            else:
                errors += 1
            failures.append(
                TestFailure(
                    test_id=test_id,
                    kind=kind,
                    message=_trim(bad.get("message", "") or "", 500),
                    text=_trim(bad.text or "", max_failure_chars),
                    path=path,
                    line=line,
                )
            )
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return TestsSummary(
        passed=passed,
        failed=failed,
        errors=errors,
        skipped=skipped,
        failures=tuple(failures),
        junit_xml=xml_text,
        ran=passed + failed + errors + skipped > 0,
    )


def synthetic_failure(runner: str, message: str, output: str) -> TestsSummary:
    """A run that produced no report (timed out, crashed, conftest error): one error."""
    failure = TestFailure(test_id=runner, kind="error", message=message, text=_trim(output, 2000))
    return TestsSummary(
        errors=1, failures=(failure,), junit_xml=merge_junit([], [failure]), ran=True
    )


def combine(parts: Sequence[TestsSummary], coverage: float | None) -> TestsSummary:
    ran = [p for p in parts if p.ran]
    if not ran:
        return TestsSummary(coverage_percent=coverage)
    return TestsSummary(
        passed=sum(p.passed for p in ran),
        failed=sum(p.failed for p in ran),
        errors=sum(p.errors for p in ran),
        skipped=sum(p.skipped for p in ran),
        coverage_percent=coverage,
        failures=tuple(f for p in ran for f in p.failures),
        junit_xml=ran[0].junit_xml if len(ran) == 1 else merge_junit([p.junit_xml for p in ran]),
        ran=True,
    )


def merge_junit(reports: Sequence[str], synthetic: Sequence[TestFailure] = ()) -> str:
    """One <testsuites> holding every report's suites (bare test cases get a suite)."""
    out = Element("testsuites")
    for index, text in enumerate(reports):
        try:
            root = SafeET.fromstring(text.encode("utf-8"))
        except Exception:  # noqa: S112 - a broken report was already counted as an error
            continue
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in suites:
            out.append(suite)
        bare = [c for c in root if c.tag == "testcase"]
        if bare:
            suite = SubElement(out, "testsuite", name=f"report-{index + 1}", tests=str(len(bare)))
            suite.extend(bare)
    for failure in synthetic:
        suite = SubElement(out, "testsuite", name=failure.test_id, tests="1", errors="1")
        case = SubElement(suite, "testcase", name=failure.test_id, classname=failure.test_id)
        err = SubElement(case, "error", message=failure.message)
        err.text = failure.text
    body = tostring(out, encoding="unicode")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + body + "\n"
