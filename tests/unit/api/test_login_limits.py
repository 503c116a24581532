"""The pieces of the login limits that need no database: client identities, the sliding
window's arithmetic, and the refusal tally (tests/integration/test_rate_limits.py has the
rules themselves, on PostgreSQL)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from qlp.api.limits import client_key
from qlp.api.refusals import RefusalTally, aggregated
from qlp.store.audit import AuditEntry
from qlp.store.counters import Count


def test_client_key_groups_an_ipv6_host_and_unwraps_mapped_ipv4() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert client_key("unknown") == "unknown"


def test_the_sliding_estimate_and_its_wait() -> None:
    # 10 hits in the previous minute, 2 in this one, 30 s into it: 2 + 10 * 0.5 = 7.
    half = Count(current=2, previous=10, elapsed=0.5)
    assert half.estimate == 7.0
    assert half.allows(8) and not half.allows(7)
    # Allowed again (estimate <= 6) once the previous minute's share is 4, at 36 s: 6 s on.
    assert half.wait_s(7) == 6
    # This minute alone is over the limit: wait into the next one.
    full = Count(current=10, previous=0, elapsed=0.25)
    assert not full.allows(10)
    assert full.wait_s(10) == 45 + 6  # the rest of this minute, then 10 * (1 - g) <= 9
    assert Count(0, 0, 0.9).wait_s(1) == 1  # never 0, even when nothing needs waiting for


@dataclass
class _Audit:
    rows: list[AuditEntry] = field(default_factory=list)

    async def append(self, entry: AuditEntry) -> None:
        self.rows.append(entry)


def _refused(client: str, actor: str = "anonymous", status: int = 429) -> AuditEntry:
    return AuditEntry(
        actor=actor,
        action="auth.login",
        outcome="denied",
        resource="/api/v1/auth/login",
        status_code=status,
        client_ip=client,
        request_id=f"req-{client}",
    )


def test_refusals_become_one_row_per_key_and_minute() -> None:
    audit = _Audit()
    tally = RefusalTally(audit)  # type: ignore[arg-type]
    t0 = 1_800_000_000.0  # a minute boundary
    for i in range(50):
        tally.note(_refused("10.0.0.1"), now=t0 + i)
    tally.note(_refused("10.0.0.2"), now=t0 + 1)
    tally.note(_refused("10.0.0.1"), now=t0 + 61)  # the next minute
    assert asyncio.run(tally.flush(now=t0 + 59)) == 0  # its minute is not over
    assert asyncio.run(tally.flush(now=t0 + 60)) == 2
    counts = {(r.client_ip, r.details["count"]) for r in audit.rows}
    assert counts == {("10.0.0.1", 50), ("10.0.0.2", 1)}
    assert {r.request_id for r in audit.rows} == {"req-10.0.0.1", "req-10.0.0.2"}
    assert asyncio.run(tally.flush(everything=True, now=t0 + 61)) == 1
    assert audit.rows[-1].details["count"] == 1


def test_refusals_from_too_many_clients_share_one_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qlp.api.refusals.MAX_KEYS", 3)
    audit = _Audit()
    tally = RefusalTally(audit)  # type: ignore[arg-type]
    for n in range(10):
        tally.note(_refused(f"10.0.0.{n}"), now=1_800_000_000.0)
    asyncio.run(tally.flush(everything=True))
    assert len(audit.rows) == 4
    assert sum(int(r.details["count"]) for r in audit.rows) == 10
    assert [r.client_ip for r in audit.rows if r.actor == "*"] == [None]


@pytest.mark.parametrize(
    ("status", "authenticated", "named", "folded"),
    [
        (429, True, False, True),
        (429, False, True, True),
        (401, False, True, False),  # a checked password has its own row
        (401, False, False, True),  # no token at all
        (422, False, False, True),
        (403, True, False, False),  # a signed-in caller's refusal has its own row
        (500, False, False, False),
    ],
)
def test_which_requests_are_folded(
    status: int, authenticated: bool, named: bool, folded: bool
) -> None:
    assert aggregated(status, authenticated, named) is folded
