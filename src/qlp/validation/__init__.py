"""Checks picked by file kind, run in the task's sandbox session; findings, scores, SARIF.

Entry point: `validate(session, workspace, config=ValidationConfig(), only_files=None)`.
docs/VALIDATION.md describes every check, mapping and formula.
"""

from qlp.validation.config import CHECKS, DEFAULT_REQUIRED_CHECKS, ValidationConfig
from qlp.validation.junit import TestFailure, TestsSummary
from qlp.validation.report import ValidationReport
from qlp.validation.runner import validate

__all__ = [
    "CHECKS",
    "DEFAULT_REQUIRED_CHECKS",
    "TestFailure",
    "TestsSummary",
    "ValidationConfig",
    "ValidationReport",
    "validate",
]
