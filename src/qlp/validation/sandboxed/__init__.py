"""Scripts that run INSIDE the sandbox with the runtime's Python (stdlib, plus PyYAML and
python-hcl2 when the runtime has them). QLP never imports them: it runs their text with
`python -c SOURCE` and sends their input as JSON on standard input (an argument could not
carry a large project's file list: Linux caps one argument at 128 KiB). Each prints one JSON
object."""

from __future__ import annotations

from importlib import resources


def script(name: str) -> str:
    """The source of sandboxed/<name>.py, for `python -c`."""
    return resources.files(__package__).joinpath(f"{name}.py").read_text(encoding="utf-8")
