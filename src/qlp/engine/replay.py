"""Rebuild a capsule from its own transcript and compare the bytes.

The whole pipeline runs again (plan, agents, sandbox checks, gate, packaging) with every
model answer taken from the capsule's `transcript.jsonl`; the rebuilt capsule carries the
original's identity (intent id, version, parent, decision) so that, when everything else is
reproducible, the two files are byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlp.capsule.base import ReviewDecision
from qlp.capsule.verify import verify_capsule
from qlp.errors import LLMError, UserInputError
from qlp.llm.base import LLMRequest, LLMResponse, Usage

TRANSCRIPT = "transcript.jsonl"


class ReplayClient:
    """An LLMClient that answers from a capsule's transcript.

    A call takes the first unused transcript entry with the same purpose and the same
    messages; failing that, the first unused entry with the same purpose (the prompt may
    differ when settings differ; the comparison of the rebuilt capsule then shows it).
    """

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self._entries = entries
        self._used = [False] * len(entries)
        self._lock = threading.Lock()
        first = entries[0] if entries else {}
        self._provider = str(first.get("provider", "replay"))
        self._model = str(first.get("model", "replay"))

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def model(self) -> str:
        return self._model

    def _take(self, request: LLMRequest) -> dict[str, Any]:
        messages = [m.as_dict() for m in request.messages]
        with self._lock:
            for exact in (True, False):
                for i, entry in enumerate(self._entries):
                    if self._used[i] or entry.get("purpose") != request.purpose:
                        continue
                    if exact and entry.get("request", {}).get("messages") != messages:
                        continue
                    self._used[i] = True
                    return entry
        raise LLMError(
            f"the capsule's transcript has no unused answer for a {request.purpose!r} call "
            f"({sum(self._used)} of {len(self._entries)} answers used)"
        )

    async def complete(self, request: LLMRequest) -> LLMResponse:
        entry = self._take(request)
        if entry.get("error"):
            raise LLMError(str(entry["error"]))
        usage = entry.get("usage") or {}
        return LLMResponse(
            content=str(entry.get("response") or ""),
            provider=str(entry.get("provider", "replay")),
            model=str(entry.get("model", "replay")),
            usage=Usage(
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
            ),
            cost_usd=entry.get("cost_usd"),
            latency_s=0.0,
        )

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class Original:
    path: Path
    manifest: dict[str, Any]
    transcript: list[dict[str, Any]]

    @property
    def intent_text(self) -> str:
        return str(self.manifest["intent"]["text"])

    @property
    def decision(self) -> ReviewDecision:
        d = self.manifest.get("decision") or {}
        if not d:
            raise UserInputError("the capsule records no review decision; nothing to replay")
        return ReviewDecision(
            decision=str(d["decision"]),
            by=str(d["by"]),
            at=str(d["at"]),
            reason=str(d.get("reason") or ""),
        )


def load_original(path: Path) -> Original:
    if not path.is_file():
        raise UserInputError(f"no capsule at {path}")
    report = verify_capsule(path)
    if not report.ok:
        problems = "; ".join(str(p) for p in report.problems[:5])
        raise UserInputError(f"{path} does not verify, so it cannot be replayed: {problems}")
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        lines = z.read(TRANSCRIPT).decode().splitlines()
    return Original(path, manifest, [json.loads(line) for line in lines if line.strip()])


def _digests(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as z:
        return {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ReplayResult:
    original_sha256: str
    rebuilt_sha256: str
    rebuilt_path: Path
    intent_id: str
    status: str
    differing: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.original_sha256 == self.rebuilt_sha256

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "original_sha256": self.original_sha256,
            "rebuilt_sha256": self.rebuilt_sha256,
            "rebuilt_path": str(self.rebuilt_path),
            "replay_intent_id": self.intent_id,
            "status": self.status,
            "differing_entries": self.differing,
        }


def compare(original: Path, rebuilt: Path) -> list[str]:
    """Entries whose bytes differ, or that only one of the two capsules holds."""
    a, b = _digests(original), _digests(rebuilt)
    return sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
