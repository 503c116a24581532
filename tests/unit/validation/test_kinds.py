"""File kinds from names and #! lines; the walk never follows links or enters caches."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from qlp.validation.kinds import Kind, _head, classify, is_js_test, is_python_test, kind_of
from tests.fifo_guard import fifo_guard


@pytest.mark.parametrize(
    ("path", "head", "kind"),
    [
        ("a/b.py", b"", Kind.PYTHON),
        ("x.mjs", b"", Kind.JAVASCRIPT),
        ("x.tsx", b"", Kind.TYPESCRIPT),
        ("x.jsx", b"", Kind.TYPESCRIPT),
        ("deploy.sh", b"", Kind.SHELL),
        ("bin/run", b"#!/usr/bin/env bash\n", Kind.SHELL),
        ("bin/tool", b"#!/usr/bin/python3\n", Kind.PYTHON),
        ("bin/data", b"hello", Kind.OTHER),
        ("c.YAML", b"", Kind.YAML),
        ("pyproject.toml", b"", Kind.TOML),
        ("infra/main.tf", b"", Kind.TERRAFORM),
        ("Dockerfile", b"", Kind.DOCKERFILE),
        ("docker/Dockerfile.prod", b"", Kind.DOCKERFILE),
        ("api.dockerfile", b"", Kind.DOCKERFILE),
        ("README.md", b"", Kind.MARKDOWN),
        ("LICENSE", b"", Kind.OTHER),
    ],
)
def test_kind_of(path: str, head: bytes, kind: Kind) -> None:
    assert kind_of(path, head) == kind


def test_test_file_patterns() -> None:
    assert is_python_test("tests/test_x.py") and is_python_test("x_test.py")
    assert not is_python_test("testing.py")
    assert is_js_test("a.test.js") and is_js_test("test/a.js") and is_js_test("test-x.mjs")
    assert not is_js_test("app.js") and not is_js_test("a.test.ts")


def test_classify_walks_safely(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "run").write_text("#!/bin/sh\necho hi\n")
    for junk in ("node_modules", ".git", "__pycache__"):
        (tmp_path / junk).mkdir()
        (tmp_path / junk / "x.js").write_text("1\n")
    outside = tmp_path.parent / "outside.py"
    outside.write_text("secret = 1\n")
    os.symlink(outside, tmp_path / "link.py")
    os.symlink(tmp_path.parent, tmp_path / "up")
    inv = classify(tmp_path)
    assert inv.all_files == ("pkg/a.py", "run")
    assert inv.files(Kind.PYTHON) == ("pkg/a.py",)
    assert inv.files(Kind.SHELL) == ("run",)


def test_classify_skips_fifos_sockets_and_never_opens_them(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    fifos = [tmp_path / "b.py", tmp_path / "runme"]  # "runme": no extension, head looked at
    for fifo in fifos:
        os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "c.py"))
        with fifo_guard(*fifos):
            inv = classify(tmp_path)
    finally:
        sock.close()
    assert inv.all_files == ("a.py",)


def test_a_file_swapped_for_a_fifo_has_no_head(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "runme")
    with fifo_guard(tmp_path / "runme"):
        assert _head(tmp_path / "runme") == b""
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    assert _head(tmp_path / "tool") == b"#!/bin/sh\n"


def test_scope_and_limit(tmp_path: Path) -> None:
    for name in ("a.py", "b.py", "c.py", "test_a.py"):
        (tmp_path / name).write_text("x = 1\n")
    inv = classify(tmp_path, only_files=["./b.py", "test_a.py"])
    assert inv.files(Kind.PYTHON) == ("b.py", "test_a.py")
    assert inv.files(Kind.PYTHON, scoped=False) == ("a.py", "b.py", "c.py", "test_a.py")
    assert inv.python_tests() == ("test_a.py",)
    limited = classify(tmp_path, max_files=2)
    assert (limited.all_files, limited.dropped) == (("a.py", "b.py"), 2)
