"""Leases on intents: which process works on one, and the fence on its writes.

A process that runs an intent (a worker's job, `qlp run`/`resume`, a review decision)
first *claims* it: one UPDATE bumps `intents.lease` (the epoch), names the holder and sets
`lease_until` to the database clock plus the lease's time to live. The claim succeeds only
if no other lease is live (none, released, or expired). While it works, the holder renews
`lease_until` every quarter of that time; at the end it releases (clears holder and until).

Every state write of the intent carries the epoch its process holds and is checked in the
same statement (store/statements.py `held`): a worker that was stopped (SIGSTOP, a frozen
VM) while its lease expired and another process claimed the intent finds, when it resumes,
each write refused with LeaseLostError; its renewal finds the lease gone and cancels the
run. So a takeover needs no cooperation from the old holder: it waits at most the time to
live after the holder's last renewal, and the old holder can no longer change anything.

A holder that is gone for sure need not be waited for: for as long as it holds epoch E, the
holder also keeps a PostgreSQL session lock named after (intent, E) on a connection of its
own. PostgreSQL frees it the moment that connection ends (the process killed, crashed or
exited), so a claimer that can take the lock of the current epoch claims at once, expired
or not: `qlp resume` right after a SIGKILLed `qlp run` does not wait. A stopped process's
connection stays open, so its lock stays held and the claimer waits for the expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from qlp.errors import IntentBusyError, LeaseLostError, NotFoundError
from qlp.store.db import lock_key

if TYPE_CHECKING:
    from qlp.store.repository import Store

log = structlog.get_logger("qlp.leases")

# Who holds a lease, as the intents row shows it: host, process and a per-process nonce.
HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

_CURRENT = text("SELECT lease FROM intents WHERE id = :id")
# Take epoch :epoch over: at once if its holder is gone (:gone), else once it has expired.
_CLAIM = text(
    """
    UPDATE intents SET lease = lease + 1, lease_holder = :holder,
        lease_until = now() + make_interval(secs => :ttl)
    WHERE id = :id AND lease = :epoch
      AND (:gone OR lease_until IS NULL OR lease_until < now())
    RETURNING lease
    """
)
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:k)")
_UNLOCK = text("SELECT pg_advisory_unlock(:k)")
_RENEW = text(
    """
    UPDATE intents SET lease_until = now() + make_interval(secs => :ttl)
    WHERE id = :id AND lease = :epoch RETURNING lease
    """
)
_RELEASE = text(
    "UPDATE intents SET lease_holder = NULL, lease_until = NULL WHERE id = :id AND lease = :epoch"
)
_HOLDER = text(
    "SELECT lease_holder, lease_until, lease_until - now() AS left FROM intents WHERE id = :id"
)


class Lease:
    """A claimed lease; `lost` once another process may have taken the intent."""

    def __init__(self, intent_id: str, epoch: int) -> None:
        self.intent_id = intent_id
        self.epoch = epoch
        self.lost = False


class Leases:
    """The leases this process holds, and claiming, renewing and releasing them."""

    def __init__(self, store: Store, ttl_s: float) -> None:
        self._store = store
        self.ttl_s = ttl_s  # a lease not renewed for this long may be taken over
        self._held: dict[str, int] = {}  # intent id -> epoch

    def epoch(self, intent_id: str) -> int | None:
        """The epoch this process's writes of the intent carry (None: it holds no lease)."""
        return self._held.get(intent_id)

    def lost(self, intent_id: str) -> LeaseLostError:
        return LeaseLostError(
            f"intent {intent_id} was taken over by another QLP process (this one was "
            "stopped or cut off longer than its lease); this process stops working on it"
        )

    @asynccontextmanager
    async def hold(self, intent_id: str) -> AsyncIterator[Lease]:
        """Claim the intent (IntentBusyError if another process holds a live lease), keep
        the lease renewed while the block runs, release it after. If the lease is lost, the
        block is cancelled and LeaseLostError raised out of it."""
        async with self._store.autocommit.connect() as own:  # holds the epoch's lock
            lease = await self._claim(own, intent_id)
            try:
                async with self._renewed(lease):
                    yield lease
            finally:
                with contextlib.suppress(Exception):  # it ends with the connection anyway
                    await asyncio.shield(own.execute(_UNLOCK, {"k": _key(intent_id, lease.epoch)}))

    @asynccontextmanager
    async def _renewed(self, lease: Lease) -> AsyncIterator[None]:
        intent_id = lease.intent_id
        self._held[intent_id] = lease.epoch
        owner = asyncio.current_task()
        renewer = asyncio.create_task(self._renew(lease, owner), name=f"qlp-lease-{intent_id}")
        try:
            yield
        except BaseException:
            if not lease.lost:
                raise
            # The renewal cancelled the block (or a write was refused first): either way
            # the run ends with LeaseLostError, not as a cancellation of its caller.
            if owner is not None and owner.cancelling():
                owner.uncancel()
            raise self.lost(intent_id) from None
        finally:
            renewer.cancel()
            with contextlib.suppress(BaseException):
                await renewer
            if self._held.get(intent_id) == lease.epoch:
                del self._held[intent_id]
            if not lease.lost:
                with contextlib.suppress(Exception):  # it expires by itself otherwise
                    await asyncio.shield(self._release(lease))

    async def _claim(self, own: AsyncConnection, intent_id: str) -> Lease:
        current = (await own.execute(_CURRENT, {"id": intent_id})).scalar_one_or_none()
        if current is None:
            raise NotFoundError(f"no intent with id {intent_id}")
        seen = _key(intent_id, int(current))
        # Free: nobody holds epoch `current` (its holder released it or is gone).
        gone = bool((await own.execute(_TRY_LOCK, {"k": seen})).scalar_one())
        params = {"id": intent_id, "epoch": int(current), "gone": gone}
        epoch = (
            await own.execute(_CLAIM, {**params, "holder": HOLDER, "ttl": self.ttl_s})
        ).scalar_one_or_none()
        if gone:
            await own.execute(_UNLOCK, {"k": seen})
        if epoch is not None:
            # A new epoch: nobody has its lock.
            await own.execute(_TRY_LOCK, {"k": _key(intent_id, int(epoch))})
            return Lease(intent_id, int(epoch))
        row = (await own.execute(_HOLDER, {"id": intent_id})).one()
        left = max(0.0, row.left.total_seconds()) if row.left is not None else 0.0
        raise IntentBusyError(
            f"intent {intent_id} is being run by another QLP process ({row.lease_holder}); "
            f"wait for it to finish or stop it first (its lease ends in {left:.0f} s unless "
            "renewed)"
        )

    async def _renew(self, lease: Lease, owner: asyncio.Task[object] | None) -> None:
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.ttl_s / 4)
            try:
                async with self._store.autocommit.connect() as conn:
                    still = (
                        await conn.execute(
                            _RENEW,
                            {"id": lease.intent_id, "epoch": lease.epoch, "ttl": self.ttl_s},
                        )
                    ).scalar_one_or_none()
            except Exception as exc:  # the database unreachable: try again until the end
                log.warning("lease.renew_failed", intent_id=lease.intent_id, error=str(exc))
                still = lease.epoch if loop.time() - renewed < self.ttl_s else None
            else:
                renewed = loop.time()
            if still is None:
                lease.lost = True
                log.warning("lease.lost", intent_id=lease.intent_id, epoch=lease.epoch)
                if owner is not None:
                    owner.cancel()
                return

    async def _release(self, lease: Lease) -> None:
        async with self._store.autocommit.connect() as conn:
            await conn.execute(_RELEASE, {"id": lease.intent_id, "epoch": lease.epoch})


def _key(intent_id: str, epoch: int) -> int:
    """The session lock standing for "the holder of this epoch is alive"."""
    return lock_key(f"qlp-lease:{intent_id}:{epoch}")
