from __future__ import annotations

import pytest

from qlp.domain.artifacts import (
    AgentOutput,
    FileLimits,
    FileOut,
    PathRuleError,
    check_output,
    check_relative_path,
)

LIMITS = FileLimits(max_files=3, max_file_bytes=100, max_path_length=40)


@pytest.mark.parametrize("path", ["a.py", "src/pkg/mod.py", "docs/README.md", ".github/x.yml"])
def test_ordinary_paths_pass(path: str) -> None:
    assert check_relative_path(path, max_length=40) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../x", "leaves the project"),
        ("a/../../x", "leaves the project"),
        ("a//b", "empty or '.'"),
        ("./a", "empty or '.'"),
        ("a\\b", "forbidden"),
        ("a\x00b", "forbidden"),
        ("a\nb", "forbidden"),
        ("nul", "reserved"),
        ("dir/COM1.txt", "reserved"),
        ("a/b. ", "ending"),
        (".git/config", ".git"),
        ("x" * 41, "longer than 40"),
        ("C:/x", "forbidden"),
    ],
)
def test_unsafe_paths_are_refused(path: str, reason: str) -> None:
    with pytest.raises(PathRuleError, match=reason.replace(".", r"\.")):
        check_relative_path(path, max_length=40)


def _out(*files: tuple[str, str]) -> AgentOutput:
    return AgentOutput(files=[FileOut(path=p, content=c) for p, c in files])


def test_whole_answer_refused_on_one_bad_file() -> None:
    with pytest.raises(PathRuleError, match="leaves"):
        check_output(_out(("ok.py", "x"), ("../bad", "y")), LIMITS)


def test_limits_on_count_size_duplicates_and_file_folder_clash() -> None:
    with pytest.raises(PathRuleError, match="4 files but at most 3"):
        check_output(_out(*((f"{i}.txt", "") for i in range(4))), LIMITS)
    with pytest.raises(PathRuleError, match="101 bytes; the limit is 100"):
        check_output(_out(("a", "é" * 50 + "x")), LIMITS)
    with pytest.raises(PathRuleError, match="appears twice"):
        check_output(_out(("A.py", ""), ("a.py", "")), LIMITS)
    with pytest.raises(PathRuleError, match="both a file and the folder"):
        check_output(_out(("pkg", ""), ("pkg/mod.py", "")), LIMITS)
    assert [f.path for f in check_output(_out(("a", "1"), ("b/c", "2")), LIMITS)] == ["a", "b/c"]
