"""File contents by sha256 (table `blobs`): the truth of a workspace, on every host.

The `files` table says which path of an intent holds which sha256; this store holds the
bytes. A worker on any host rebuilds an intent's workspace from the two (engine/workspace.py
`materialize`), so a job resumed elsewhere finds the project's files. Content-addressed: a
blob is written once, whoever writes the same bytes again (another intent, a re-run) adds
nothing, and a blob is never changed. PostgreSQL compresses large values itself (TOAST).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from qlp.store import schema as t
from qlp.store.repository import Store, utcnow


class BlobStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, contents: Iterable[bytes]) -> list[str]:
        """Stores each content (once); returns their sha256s in order."""
        rows: dict[str, bytes] = {}
        digests = []
        for data in contents:
            digest = hashlib.sha256(data).hexdigest()
            digests.append(digest)
            rows[digest] = data
        if rows:
            now = utcnow()
            statement = insert(t.blobs).on_conflict_do_nothing(index_elements=["sha256"])
            async with self.store.engine.begin() as conn:
                await conn.execute(
                    statement,
                    [
                        {"sha256": d, "size": len(b), "content": b, "created_at": now}
                        for d, b in sorted(rows.items())
                    ],
                )
        return digests

    async def get(self, digests: Sequence[str]) -> dict[str, bytes]:
        """The contents of those of `digests` that are stored."""
        if not digests:
            return {}
        query = select(t.blobs.c.sha256, t.blobs.c.content).where(
            t.blobs.c.sha256.in_(sorted(set(digests)))
        )
        async with self.store.autocommit.connect() as conn:
            return {row.sha256: bytes(row.content) for row in await conn.execute(query)}
