"""Tool output (JSON) -> Finding. Every severity mapping lives here (docs/VALIDATION.md).

The parsers take the already-decoded JSON and never trust its shape: a missing or odd field is
skipped, not an exception, because the output comes from tools run against untrusted code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from qlp.domain.findings import Category, Finding, Severity
from qlp.sandbox.base import WORKSPACE

# -- paths -----------------------------------------------------------------------------------


def project_path(raw: object) -> str:
    """A tool's file name -> the project-relative POSIX path ("/workspace/a.py", "./a.py",
    "/a.py" (checkov) -> "a.py")."""
    text = str(raw or "")
    if text.startswith(WORKSPACE + "/"):
        text = text[len(WORKSPACE) + 1 :]
    while text.startswith("./"):
        text = text[2:]
    return text.lstrip("/")


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value > 0 else None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


_CWE = re.compile(r"CWE-(\d+)", re.IGNORECASE)


def cwe_of(value: object) -> str | None:
    """ "CWE-89: ..." / 89 / ["CWE-79: ..."] / {"id": 78} -> "CWE-89"; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"CWE-{value}" if value > 0 else None
    if isinstance(value, str):
        m = _CWE.search(value)
        return f"CWE-{m[1]}" if m else None
    if isinstance(value, list):
        return next((c for c in map(cwe_of, value) if c), None)
    if isinstance(value, dict):
        return cwe_of(value.get("id"))
    return None


# -- ruff ------------------------------------------------------------------------------------

# Ruff's flake8-bandit (S) rules are bandit's tests re-implemented; their severities follow
# bandit's own ratings of the same test (S602 = B602), with the CWE bandit reports for it.
RUFF_SECURITY: Mapping[str, tuple[Severity, str | None]] = {
    "S102": (Severity.MEDIUM, "CWE-78"),  # exec
    "S103": (Severity.MEDIUM, "CWE-732"),  # permissive file mode
    "S104": (Severity.MEDIUM, "CWE-605"),  # bind to all interfaces
    "S105": (Severity.LOW, "CWE-259"),  # hard-coded password string
    "S106": (Severity.LOW, "CWE-259"),  # hard-coded password argument
    "S107": (Severity.LOW, "CWE-259"),  # hard-coded password default
    "S108": (Severity.MEDIUM, "CWE-377"),  # hard-coded temp file
    "S110": (Severity.LOW, "CWE-703"),  # try/except/pass
    "S112": (Severity.LOW, "CWE-703"),  # try/except/continue
    "S113": (Severity.MEDIUM, "CWE-400"),  # request without timeout
    "S201": (Severity.HIGH, "CWE-94"),  # flask debug=True
    "S202": (Severity.HIGH, "CWE-22"),  # tarfile extractall
    "S301": (Severity.MEDIUM, "CWE-502"),  # pickle
    "S302": (Severity.MEDIUM, "CWE-502"),  # marshal
    "S303": (Severity.MEDIUM, "CWE-327"),  # insecure hash
    "S304": (Severity.HIGH, "CWE-327"),  # insecure cipher
    "S305": (Severity.MEDIUM, "CWE-327"),  # insecure cipher mode
    "S306": (Severity.MEDIUM, "CWE-377"),  # mktemp
    "S307": (Severity.MEDIUM, "CWE-78"),  # eval
    "S308": (Severity.MEDIUM, "CWE-79"),  # mark_safe
    "S310": (Severity.MEDIUM, "CWE-22"),  # urlopen of any scheme
    "S311": (Severity.LOW, "CWE-330"),  # random for security
    "S312": (Severity.HIGH, "CWE-319"),  # telnetlib
    "S321": (Severity.HIGH, "CWE-319"),  # ftplib
    "S323": (Severity.MEDIUM, "CWE-295"),  # unverified ssl context
    "S324": (Severity.HIGH, "CWE-327"),  # md5/sha1 for security
    "S501": (Severity.HIGH, "CWE-295"),  # requests verify=False
    "S502": (Severity.HIGH, "CWE-327"),  # ssl with bad version
    "S503": (Severity.MEDIUM, "CWE-327"),
    "S504": (Severity.LOW, "CWE-327"),
    "S505": (Severity.HIGH, "CWE-326"),  # weak key size
    "S506": (Severity.MEDIUM, "CWE-20"),  # yaml.load
    "S507": (Severity.HIGH, "CWE-295"),  # paramiko auto-add host key
    "S508": (Severity.MEDIUM, "CWE-319"),  # snmp insecure version
    "S509": (Severity.MEDIUM, "CWE-319"),
    "S601": (Severity.MEDIUM, "CWE-78"),  # paramiko exec_command
    "S602": (Severity.HIGH, "CWE-78"),  # subprocess shell=True
    "S604": (Severity.MEDIUM, "CWE-78"),  # any call with shell=True
    "S605": (Severity.HIGH, "CWE-78"),  # os.system / popen with a shell
    "S606": (Severity.LOW, "CWE-78"),
    "S607": (Severity.LOW, "CWE-78"),  # partial executable path
    "S608": (Severity.MEDIUM, "CWE-89"),  # SQL built from strings
    "S609": (Severity.HIGH, "CWE-155"),  # wildcard injection
    "S610": (Severity.MEDIUM, "CWE-89"),  # Django extra
    "S611": (Severity.MEDIUM, "CWE-89"),  # Django RawSQL
    "S612": (Severity.HIGH, "CWE-94"),  # logging.config.listen
    "S701": (Severity.HIGH, "CWE-94"),  # jinja2 autoescape=False
    "S702": (Severity.MEDIUM, "CWE-80"),  # mako templates
    # S313-S320: XML parsers open to entity expansion
    **{f"S{n}": (Severity.MEDIUM, "CWE-20") for n in range(313, 321)},
}
# Lint prefixes: pyflakes, bugbear and pylint errors point at likely bugs; the rest is style.
RUFF_LINT_MEDIUM = ("F", "B", "PLE", "ASYNC", "E9")


def ruff_findings(data: object) -> list[Finding]:
    out: list[Finding] = []
    for item in _dicts(data):
        code = item.get("code")
        if not isinstance(code, str) or not code:
            continue  # a syntax error: python.compile reports it
        loc = _obj(item.get("location"))
        message = str(item.get("message", ""))
        if code.startswith("S") and code[1:].isdigit():
            severity, cwe = RUFF_SECURITY.get(code, (Severity.MEDIUM, None))
            category = Category.SECURITY
        else:
            severity = Severity.MEDIUM if code.startswith(RUFF_LINT_MEDIUM) else Severity.LOW
            cwe, category = None, Category.LINT
        out.append(
            Finding(
                tool="ruff",
                rule_id=code,
                severity=severity,
                path=project_path(item.get("filename")),
                line=_int(loc.get("row")),
                column=_int(loc.get("column")),
                message=message,
                cwe=cwe,
                category=category,
            )
        )
    return out


# -- bandit ----------------------------------------------------------------------------------

_BANDIT_LEVEL = {"LOW": Severity.LOW, "MEDIUM": Severity.MEDIUM, "HIGH": Severity.HIGH}


def bandit_severity(severity: object, confidence: object) -> Severity:
    """Bandit's own severity; one step lower when bandit itself has LOW confidence."""
    level = _BANDIT_LEVEL.get(str(severity).upper(), Severity.LOW)
    return level.lowered() if str(confidence).upper() == "LOW" else level


def bandit_findings(data: object) -> list[Finding]:
    results = data.get("results") if isinstance(data, dict) else None
    out: list[Finding] = []
    for item in _dicts(results):
        col = item.get("col_offset")
        out.append(
            Finding(
                tool="bandit",
                rule_id=str(item.get("test_id", "B000")),
                severity=bandit_severity(item.get("issue_severity"), item.get("issue_confidence")),
                path=project_path(item.get("filename")),
                line=_int(item.get("line_number")),
                column=col + 1 if isinstance(col, int) and not isinstance(col, bool) else None,
                message=str(item.get("issue_text", "")),
                cwe=cwe_of(item.get("issue_cwe")),
                category=Category.SECURITY,
            )
        )
    return out


# -- semgrep ---------------------------------------------------------------------------------

_SEMGREP_LEVEL = {"ERROR": Severity.HIGH, "WARNING": Severity.MEDIUM, "INFO": Severity.LOW}
_SEMGREP_LEVEL.update({"CRITICAL": Severity.CRITICAL, "HIGH": Severity.HIGH})
_SEMGREP_LEVEL.update({"MEDIUM": Severity.MEDIUM, "LOW": Severity.LOW})


def semgrep_findings(data: object) -> list[Finding]:
    results = data.get("results") if isinstance(data, dict) else None
    out: list[Finding] = []
    for item in _dicts(results):
        extra, start = _obj(item.get("extra")), _obj(item.get("start"))
        meta = _obj(extra.get("metadata"))
        # Our rules may state a finer severity than semgrep's three levels (qlp-severity).
        level = str(meta.get("qlp-severity") or extra.get("severity") or "").upper()
        rule = str(item.get("check_id", "semgrep"))
        out.append(
            Finding(
                tool="semgrep",
                # semgrep prefixes the rule id with the config file's folder; ours have no dots
                rule_id=rule.rsplit(".", 1)[-1],
                severity=_SEMGREP_LEVEL.get(level, Severity.MEDIUM),
                path=project_path(item.get("path")),
                line=_int(start.get("line")),
                column=_int(start.get("col")),
                message=str(extra.get("message", "")).strip(),
                cwe=cwe_of(meta.get("cwe")),
                category=Category.SECURITY,
            )
        )
    return out


# -- checkov ---------------------------------------------------------------------------------

# Checkov gives no severity without a platform account. Ours: HIGH for checks of public
# exposure, anonymous access, unrestricted ingress to admin ports and embedded credentials;
# LOW for hygiene that does not itself expose anything; MEDIUM for every other failed check.
CHECKOV_HIGH: Mapping[str, str] = {
    # Azure
    "CKV_AZURE_59": "CWE-284",  # storage account allows public access
    "CKV_AZURE_190": "CWE-284",  # storage blobs allow public access
    "CKV2_AZURE_47": "CWE-284",  # blob anonymous access
    "CKV_AZURE_9": "CWE-284",  # RDP open to the internet
    "CKV_AZURE_10": "CWE-284",  # SSH open to the internet
    "CKV_AZURE_77": "CWE-284",  # UDP open to the internet
    "CKV_AZURE_138": "CWE-284",  # container registry anonymous pull
    "CKV_AZURE_3": "CWE-319",  # storage without secure transfer
    # AWS
    "CKV_AWS_20": "CWE-284",  # S3 public READ ACL
    "CKV_AWS_57": "CWE-284",  # S3 public WRITE ACL
    "CKV_AWS_24": "CWE-284",  # SSH from 0.0.0.0/0
    "CKV_AWS_25": "CWE-284",  # RDP from 0.0.0.0/0
    "CKV_AWS_17": "CWE-284",  # RDS publicly accessible
    "CKV_AWS_41": "CWE-798",  # hard-coded AWS keys in the provider
    "CKV_AWS_46": "CWE-798",  # secrets in EC2 user data
    "CKV_AWS_45": "CWE-798",  # secrets in Lambda environment
    # GCP
    "CKV_GCP_2": "CWE-284",  # SSH open to the internet
    "CKV_GCP_3": "CWE-284",  # RDP open to the internet
    "CKV_GCP_28": "CWE-284",  # bucket readable by everyone
    # Dockerfile
    "CKV_DOCKER_1": "CWE-284",  # port 22 exposed
}
CHECKOV_LOW: frozenset[str] = frozenset(
    {
        "CKV_DOCKER_2",  # no HEALTHCHECK
        "CKV_DOCKER_5",  # `apt-get update` alone
        "CKV_DOCKER_6",  # MAINTAINER
        "CKV_DOCKER_7",  # image tag `latest`
        "CKV_DOCKER_9",  # `apt` instead of apt-get
        "CKV_DOCKER_10",  # relative WORKDIR
        "CKV_DOCKER_11",  # duplicate stage alias
        "CKV2_AZURE_1",  # customer-managed key
        "CKV_AZURE_33",  # queue logging
        "CKV_AZURE_206",  # replication
        "CKV2_AZURE_38",  # soft delete
        "CKV2_AZURE_41",  # SAS expiration policy
    }
)
CHECKOV_MEDIUM_CWE: Mapping[str, str] = {
    "CKV_DOCKER_3": "CWE-250",  # no non-root user created
    "CKV_DOCKER_8": "CWE-250",  # last USER is root
    "CKV_DOCKER_4": "CWE-829",  # ADD (remote fetch) instead of COPY
}


def checkov_severity(check_id: str) -> tuple[Severity, str | None]:
    if check_id in CHECKOV_HIGH:
        return Severity.HIGH, CHECKOV_HIGH[check_id]
    if check_id in CHECKOV_LOW:
        return Severity.LOW, None
    return Severity.MEDIUM, CHECKOV_MEDIUM_CWE.get(check_id)


def checkov_reports(data: object) -> list[dict[str, Any]]:
    """Checkov prints one report object, or a list of them when several frameworks ran."""
    if isinstance(data, dict):
        return [data]
    return _dicts(data)


def checkov_findings(report: Mapping[str, Any]) -> list[Finding]:
    results = _obj(report.get("results"))
    out: list[Finding] = []
    # In-code suppressions (#checkov:skip=...) are written by the same author as the code
    # under review, so a skipped check counts as failed (docs/VALIDATION.md).
    for item in _dicts(results.get("failed_checks")) + _dicts(results.get("skipped_checks")):
        check_id = str(item.get("check_id", "CKV_UNKNOWN"))
        severity, cwe = checkov_severity(check_id)
        lines = item.get("file_line_range")
        line = _int(lines[0]) if isinstance(lines, list) and lines else None
        resource = item.get("resource")
        message = str(item.get("check_name", check_id))
        if resource:
            message = f"{message} ({resource})"
        out.append(
            Finding(
                tool="checkov",
                rule_id=check_id,
                severity=severity,
                path=project_path(item.get("file_abs_path") or item.get("file_path")),
                line=line,
                message=message,
                cwe=cwe,
                category=Category.SECURITY,
            )
        )
    return out


# -- shellcheck ------------------------------------------------------------------------------

_SHELLCHECK_LEVEL = {
    "error": Severity.MEDIUM,
    "warning": Severity.LOW,
    "info": Severity.INFO,
    "style": Severity.INFO,
}


def shellcheck_findings(data: object) -> list[Finding]:
    comments = data.get("comments") if isinstance(data, dict) else data
    out: list[Finding] = []
    for item in _dicts(comments):
        code = item.get("code")
        out.append(
            Finding(
                tool="shellcheck",
                rule_id=f"SC{code}" if isinstance(code, int) else str(code or "SC0000"),
                severity=_SHELLCHECK_LEVEL.get(str(item.get("level")), Severity.LOW),
                path=project_path(item.get("file")),
                line=_int(item.get("line")),
                column=_int(item.get("column")),
                message=str(item.get("message", "")),
                category=Category.LINT,
            )
        )
    return out
