"""Run generated code in isolation: the port (`base.py`) and its backends.

bubblewrap (default), docker and gvisor; `engine/wiring.py` picks one. See docs/SANDBOX.md
and docs/SECURITY.md.
"""

from qlp.sandbox.base import ExecResult, KilledReason, Limits, Sandbox, SandboxSession

__all__ = ["ExecResult", "KilledReason", "Limits", "Sandbox", "SandboxSession"]
