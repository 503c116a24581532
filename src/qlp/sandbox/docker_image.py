"""Build the Docker sandbox image from this host, with no registry: `docker import` of a
root filesystem assembled from the host's own files.

The image holds the system Python that the runtime environment was made from, its standard
library and the shared libraries it and a few tools need (found with ldd), the runtime
environment itself (pytest and friends) at the same path as on the host, and a handful of
coreutils. It is what `qlp sandbox build-image` makes and what the test suite runs against.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qlp.errors import SandboxError

TOOLS = (
    "sh",
    "dash",
    "bash",
    "cat",
    "head",
    "sleep",
    "ls",
    "id",
    "env",
    "true",
    "false",
    "echo",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "touch",
    "chmod",
    "prlimit",
    "unshare",
    "kill",
)
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "__pycache__", "ensurepip"}
# --slim: the runtime's Python environment only (no other tool trees), without the
# packaging tools that sandboxed code never needs.
SLIM_RUNTIME_ENTRIES = ("bin", "lib", "lib64", "pyvenv.cfg")
SLIM_SKIP_DIRS = SKIP_DIRS | {
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "distutils-precedence.pth",  # a file: it imports _distutils_hack at start-up
}
LDD = shutil.which("ldd") or "/usr/bin/ldd"
LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def _shared_libs(paths: Iterable[Path]) -> set[Path]:
    libs: set[Path] = set()
    for path in paths:
        out = subprocess.run(  # noqa: S603 - ldd on files we chose
            [LDD, str(path)], capture_output=True, text=True, check=False
        ).stdout
        for match in LDD_LINE.finditer(out):
            libs.add(Path(match.group(1)))
    return libs


def _tree(root: Path, skip: set[str] = SKIP_DIRS) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        # config-3.x-*: static libraries for embedding Python, never needed to run it.
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith("config-")]
        files = [f for f in filenames if f not in skip]
        for name in files + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            yield Path(dirpath) / name


class _Rootfs:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w")  # noqa: SIM115 - closed in close()
        self.seen: set[str] = set()

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, name: str, mode: int = 0o755) -> None:
        if not name or name in self.seen:
            return
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self.tar.addfile(info)
        self.seen.add(name)

    def symlink(self, name: str, target: str) -> None:
        if name in self.seen:
            return
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self.tar.addfile(info)
        self.seen.add(name)

    def data(self, name: str, content: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = mode
        self.tar.addfile(info, io.BytesIO(content))
        self.seen.add(name)

    def host(self, path: Path) -> None:
        """Copy a host path (keeping symlinks as symlinks, and copying what they point at)."""
        name = str(path).lstrip("/")
        if name in self.seen or not os.path.lexists(path):
            return
        # Directories on the way may be symlinks on the host (/lib -> usr/lib): resolve them.
        real_parent = Path(os.path.realpath(path.parent))
        if real_parent != path.parent:
            self.host(real_parent / path.name)
            return
        if path.is_symlink():
            target = os.readlink(path)
            self.symlink(name, target)
            self.host((path.parent / target) if not target.startswith("/") else Path(target))
            return
        if path.is_dir():
            self.dir(name)
            return
        st = path.stat()
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.size = st.st_size
        info.mode = st.st_mode & 0o755  # no setuid/setgid bits, nothing writable by others
        with open(path, "rb") as fh:
            self.tar.addfile(info, fh)
        self.seen.add(name)

    def close(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def build_rootfs(runtime: Path, uid: int = 65534, gid: int = 65534, *, slim: bool = False) -> bytes:
    python = Path(os.path.realpath(runtime / "bin" / "python"))
    if not python.is_relative_to("/usr"):
        raise SandboxError(f"runtime {runtime} is not built on a /usr python (found {python})")
    version = re.sub(r"^python", "", python.name)
    stdlib = Path(f"/usr/lib/python{version}")
    fs = _Rootfs()
    for name in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / name
        if host.is_symlink():
            fs.symlink(name, os.readlink(host))
    for name in ("workspace", "tmp", "proc", "dev", "sys", "etc"):
        fs.dir(name, 0o1777 if name == "tmp" else 0o755)
    fs.data(
        "etc/passwd", f"root:x:0:0::/root:/bin/sh\nsandbox:x:{uid}:{gid}::/tmp:/bin/sh\n".encode()
    )
    fs.data("etc/group", f"root:x:0:\nsandbox:x:{gid}:\n".encode())
    elves: list[Path] = [python]
    fs.host(python)
    for alias in (Path("/usr/bin/python3"), Path(f"/usr/bin/python{version}")):
        fs.host(alias)
    for path in _tree(stdlib):
        fs.host(path)
        if path.suffix == ".so" and _is_elf(path):
            elves.append(path)
    if slim:
        roots = [runtime / name for name in SLIM_RUNTIME_ENTRIES if os.path.lexists(runtime / name)]
        fs.dir(str(runtime).lstrip("/"))
    else:
        roots = [runtime]
    skip = SLIM_SKIP_DIRS if slim else SKIP_DIRS
    runtime_files = (
        p for r in roots for p in ([r] if not r.is_dir() or r.is_symlink() else _tree(r, skip))
    )
    for path in runtime_files:
        fs.host(path)
        if path.is_file() and not path.is_symlink() and _is_elf(path):
            elves.append(path)
    for tool in TOOLS:
        for base in (Path("/usr/bin"), Path("/usr/sbin")):
            candidate = base / tool
            if os.path.lexists(candidate):
                fs.host(candidate)
                real = Path(os.path.realpath(candidate))
                if _is_elf(real):
                    elves.append(real)
                break
    for lib in sorted(_shared_libs(elves)):
        fs.host(lib)
    return fs.close()


def build_image(
    client: Any, runtime: Path, tag: str, uid: int = 65534, gid: int = 65534, *, slim: bool = False
) -> str:
    """Import the rootfs as `tag`; returns the image id."""
    data = build_rootfs(runtime, uid, gid, slim=slim)
    changes = [
        f"ENV PATH={runtime}/bin:/usr/local/bin:/usr/bin:/bin",
        "ENV LANG=C.UTF-8",
        f"USER {uid}:{gid}",
        "WORKDIR /workspace",
    ]
    repo, _, version = tag.partition(":")
    client.api.import_image_from_data(
        data, repository=repo, tag=version or "latest", changes=changes
    )
    image = client.images.get(tag)
    return str(image.id)
