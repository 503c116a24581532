"""Which tools and modules the sandbox's runtime offers (run inside the sandbox).

Standard input: JSON {"executables": [...], "modules": [...]}. Prints JSON
{"executables": {name: path or null}, "modules": {name: bool}, "ca_file": path or null}.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import sys


def _ca_file(semgrep: str | None) -> str | None:
    # semgrep's OCaml core reads a CA bundle at start-up even when it makes no request; the
    # sandbox has no /etc/ssl, so point it at the bundle that ships in semgrep's own venv.
    candidates: list[str] = []
    if semgrep:
        venv = os.path.dirname(os.path.dirname(os.path.realpath(semgrep)))
        candidates += sorted(glob.glob(f"{venv}/lib/python3*/site-packages/certifi/cacert.pem"))
    candidates += ["/etc/ssl/certs/ca-certificates.crt"]
    candidates += sorted(glob.glob("/usr/share/ca-certificates/mozilla/*.crt"))[:1]
    return next((c for c in candidates if os.path.isfile(c)), None)


def main() -> None:
    spec = json.loads(sys.stdin.read())
    found = {name: shutil.which(name) for name in spec["executables"]}
    modules = {name: importlib.util.find_spec(name) is not None for name in spec["modules"]}
    print(
        json.dumps(
            {"executables": found, "modules": modules, "ca_file": _ca_file(found.get("semgrep"))}
        )
    )


if __name__ == "__main__":
    main()
