"""Attacks on the service, each against a real `qlp serve` on 127.0.0.1 and each expected
to fail: reading or acting on another member's intent, a viewer writing, expired, forged,
unsigned and wrong-algorithm tokens, refresh-token reuse, revoked API keys, password
guessing, oversize bodies, path traversal, and WebSocket access without the right."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed

from qlp.auth.secrets import jwt_key_file
from qlp.auth.tokens import SigningKeys, TokenService
from tests.api_support import ApiServer, read_stream, running, server_env
from tests.fakes.llm_server import FakeLLMServer
from tests.integration.api.conftest import PASSWORD, api, llm  # noqa: F401 (fixtures)

PROBLEM = "application/problem+json"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _claims_of(token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return claims


@pytest.fixture(scope="module")
def anns_intent(api: ApiServer) -> str:  # noqa: F811
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        intent_id = str(c.post("/intents", json={"text": "ann's secret project"}).json()["id"])
    api.wait_status(token, intent_id, {"completed"})
    return intent_id


def test_member_cannot_read_or_act_on_another_members_intent(
    api: ApiServer,  # noqa: F811
    anns_intent: str,
) -> None:
    bob = api.token("bob", PASSWORD)
    with api.client(bob) as c:
        for path in ("", "/files", "/events", "/files/out/QL-DEV-001.txt"):
            r = c.get(f"/intents/{anns_intent}{path}")
            # Same answer as for an id that does not exist: nothing to probe.
            assert r.status_code == 404, (path, r.text)
            assert r.headers["content-type"] == PROBLEM
            assert "secret" not in r.text
        for action in ("cancel", "resume"):
            assert c.post(f"/intents/{anns_intent}/{action}").status_code == 404
        r = c.post(f"/intents/{anns_intent}/review", json={"decision": "approve"})
        assert r.status_code == 404
        assert anns_intent not in c.get("/intents").text
        assert anns_intent not in c.get("/capsules").text
    with api.stream(anns_intent, bob) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "error" and first["code"] == "not_found"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    # The owner still sees it.
    with api.client(api.token("ann", PASSWORD)) as c:
        assert c.get(f"/intents/{anns_intent}").status_code == 200


def test_viewer_reads_but_cannot_write(api: ApiServer, anns_intent: str) -> None:  # noqa: F811
    vic = api.token("vic", PASSWORD)
    with api.client(vic) as c:
        r = c.post("/intents", json={"text": "let me in"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert c.post(f"/intents/{anns_intent}/cancel").status_code == 403
        assert c.get(f"/intents/{anns_intent}").status_code == 200
        assert "let me in" not in c.get("/intents", params={"q": "let me in"}).text


def test_expired_token_is_refused(api: ApiServer) -> None:  # noqa: F811
    real = api.token("ann", PASSWORD)
    claims = _claims_of(real)
    keys = SigningKeys.parse(jwt_key_file(api.home).read_text().strip())
    # Properly signed with the server's own key, for a live session, but an hour old.
    old = TokenService(keys, 60, clock=lambda: time.time() - 3600)
    expired, _ = old.issue_access(str(claims["sub"]), "member", str(claims["sid"]))
    with api.client(expired) as c:
        r = c.get("/auth/me")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with api.client(real) as c:
        assert c.get("/auth/me").json()["username"] == "ann"


def test_forged_unsigned_and_wrong_algorithm_tokens_are_refused(api: ApiServer) -> None:  # noqa: F811
    real = api.token("ann", PASSWORD)
    claims = _claims_of(real)
    header = jwt.get_unverified_header(real)
    forged = {**claims, "sub": claims["sub"], "role": "admin"}
    attempts = {
        "other key": jwt.encode(forged, "x" * 48, algorithm="HS256", headers=header),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}.{_b64(forged)}.",
        "alg HS512": jwt.encode(forged, "x" * 64, algorithm="HS512", headers=header),
        "tampered payload": ".".join([real.split(".")[0], _b64(forged), real.split(".")[2]]),
        "unknown kid": jwt.encode(forged, "x" * 48, algorithm="HS256", headers={"kid": "k0"}),
        "garbage": "not-a-token",
    }
    for what, token in attempts.items():
        with api.client(token) as c:
            r = c.get("/audit")
        assert r.status_code == 401, what
        assert r.json()["code"] == "unauthorized"


def test_reused_refresh_token_revokes_the_whole_login(api: ApiServer) -> None:  # noqa: F811
    first = api.login("bob", PASSWORD)
    with api.client() as c:
        r = c.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 200
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"]
        # A thief replays the first (already rotated) refresh token.
        stolen = c.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert stolen.status_code == 401
        # The whole family is revoked: the legitimate newer tokens stop working too.
        again = c.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert again.status_code == 401
    with api.client(second["access_token"]) as c:
        assert c.get("/auth/me").status_code == 401


def test_logout_ends_the_session_at_once(api: ApiServer) -> None:  # noqa: F811
    pair = api.login("bob", PASSWORD)
    with api.client(pair["access_token"]) as c:
        assert c.post("/auth/logout").status_code == 204
        assert c.get("/auth/me").status_code == 401
    with api.client() as c:
        r = c.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 401


def test_revoked_api_key_is_refused(api: ApiServer) -> None:  # noqa: F811
    with api.client(api.token("bob", PASSWORD)) as c:
        created = c.post("/auth/api-keys", json={"name": "ci"})
        assert created.status_code == 201
        key, key_id = created.json()["key"], created.json()["id"]
        listed = c.get("/auth/api-keys").json()
        assert [k["id"] for k in listed if k["id"] == key_id] == [key_id]
        assert all("key" not in k for k in listed)  # shown once, never again
    with api.client(key) as c:
        assert c.get("/auth/me").json()["via"] == "api_key"
    with api.client(api.token("ann", PASSWORD)) as c:  # another member cannot revoke it
        assert c.delete(f"/auth/api-keys/{key_id}").status_code == 404
    with api.client(key) as c:
        assert c.get("/auth/me").status_code == 200
    with api.client(api.token("bob", PASSWORD)) as c:
        assert c.delete(f"/auth/api-keys/{key_id}").status_code == 204
    with api.client(key) as c:
        assert c.get("/auth/me").status_code == 401


def test_oversize_body_is_refused_without_reading_it(api: ApiServer) -> None:  # noqa: F811
    with api.client(api.token("ann", PASSWORD)) as c:
        big = json.dumps({"text": "x" * (2 * 1024 * 1024)})
        r = c.post("/intents", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
            yield b'{"text": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}'

        r = c.post("/intents", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_path_traversal_in_files_is_refused(
    api: ApiServer,  # noqa: F811
    anns_intent: str,
    tmp_path: Path,
) -> None:
    token = api.token("ann", PASSWORD)
    detail = None
    with api.client(token) as c:
        detail = c.get(f"/intents/{anns_intent}").json()
        assert detail["status"] == "completed"
    workspace = api.home / "workspaces" / anns_intent
    # A planted link inside the workspace must not be followed either.
    (workspace / "out" / "link.txt").symlink_to("/etc/passwd")
    base = f"{api.base}/api/v1/intents/{anns_intent}/files/"
    attempts = [
        "../../../../etc/passwd",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "out/../../../../etc/passwd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "out/link.txt",
        "out%00/QL-DEV-001.txt",
    ]
    for attempt in attempts:
        # Sent raw (httpx would normalise the dots away before they reach the server).
        r = httpx.get(base + attempt, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (400, 404), (attempt, r.status_code)
        assert "root:" not in r.text


def test_websocket_without_or_with_a_bad_token_is_closed(
    api: ApiServer,  # noqa: F811
    anns_intent: str,
) -> None:
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{api.port}/api/v1/intents/{anns_intent}/stream"
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with connect(url, additional_headers=headers) as ws:
            assert json.loads(ws.recv(timeout=10))["code"] == "unauthorized"
            assert read_stream(ws) == []
        assert ws.close_code == 4401


@pytest.fixture
def strict_server(tmp_path: Path, db_url: str) -> Iterator[ApiServer]:
    with FakeLLMServer({"responses": []}) as fake:
        env = server_env(
            tmp_path,
            db_url,
            fake.base_url,
            QLP_LOGIN_RATE_PER_MINUTE="5",
            QLP_SUBMIT_RATE_PER_MINUTE="3",
        )
        server = ApiServer(env, cwd=tmp_path)
        server.create_user("carol", PASSWORD, "member")
        # Rate counts live in the database this module's servers share: start from none.
        _sql(db_url, "DELETE FROM rate_counters")
        with running(server):
            yield server


def test_password_guessing_is_rate_limited(strict_server: ApiServer) -> None:
    codes = []
    with strict_server.client() as c:
        for i in range(8):
            r = c.post("/auth/login", json={"username": "carol", "password": f"guess-{i}"})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["code"] == "rate_limited"
        # Even the right password is refused while the limit holds.
        r = c.post("/auth/login", json={"username": "carol", "password": PASSWORD})
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    assert r.status_code == 429


def _sql(db_url: str, statement: str) -> None:
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def _login_from(server: ApiServer, address: str, username: str, password: str) -> int:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=f"{server.base}/api/v1", transport=transport, timeout=30) as c:
        r = c.post("/auth/login", json={"username": username, "password": password})
        return r.status_code


def test_a_login_flood_does_not_lock_the_real_user_out(strict_server: ApiServer) -> None:
    # Limit 5 a minute. Before the flood, carol logged in once from her usual address.
    assert _login_from(strict_server, "127.0.0.9", "carol", PASSWORD) == 200
    # An anonymous flood from one address: five guesses are checked, the rest refused ...
    flood = [_login_from(strict_server, "127.0.0.2", "carol", f"guess-{i}") for i in range(30)]
    assert flood[:5] == [401] * 5 and set(flood[5:]) == {429}
    # ... and from many addresses: carol's name is now over its limit, and each address
    # gets one checked guess before it is refused.
    for n in range(10, 14):
        assert [_login_from(strict_server, f"127.0.0.{n}", "carol", "nope") for _ in range(2)] == [
            401,
            429,
        ]
    # Even the right password is refused from an address that failed on this name ...
    assert _login_from(strict_server, "127.0.0.10", "carol", PASSWORD) == 429
    # ... but carol gets in from an address that has not failed (a new laptop) ...
    assert _login_from(strict_server, "127.0.0.20", "carol", PASSWORD) == 200
    # ... and from her usual address even after mistyping (she is held to her own address's
    # limit only, not to what the flood did).
    assert _login_from(strict_server, "127.0.0.9", "carol", "typo") == 401
    assert _login_from(strict_server, "127.0.0.9", "carol", "typo again") == 401
    assert _login_from(strict_server, "127.0.0.9", "carol", PASSWORD) == 200


def test_a_forged_forwarded_for_neither_dodges_limits_nor_lands_in_the_audit_log(
    strict_server: ApiServer, db_url: str
) -> None:
    transport = httpx.HTTPTransport(local_address="127.0.0.40")
    with httpx.Client(base_url=f"{strict_server.base}/api/v1", transport=transport) as c:
        codes = [
            c.post(
                "/auth/login",
                json={"username": "forger", "password": "x"},
                headers={"x-forwarded-for": f"198.51.100.{i}", "forwarded": f"for=203.0.113.{i}"},
            ).status_code
            for i in range(6)
        ]
    assert codes == [401] * 5 + [429]  # one client, whatever it claims to be
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        addresses = conn.execute(
            "SELECT DISTINCT client_ip FROM audit_log WHERE actor = 'forger'"
        ).fetchall()
    assert addresses == [("127.0.0.40",)]


def test_a_flood_adds_a_few_audit_rows_not_one_per_refused_attempt(
    strict_server: ApiServer, db_url: str
) -> None:
    name = "flood-target"
    codes = [_login_from(strict_server, "127.0.0.30", name, f"guess-{i}") for i in range(60)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    transport = httpx.HTTPTransport(local_address="127.0.0.31")
    with httpx.Client(base_url=f"{strict_server.base}/api/v1", transport=transport) as c:
        anonymous = [c.post("/intents", json={"text": "x"}).status_code for _ in range(20)]
    assert set(anonymous) == {401}
    assert strict_server.stop() == 0  # counts of the minute in progress are written at stop
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT status_code, details FROM audit_log WHERE actor = %s ORDER BY seq", (name,)
        ).fetchall()
        since = conn.execute(
            "SELECT count(*), sum((details->>'count')::int) FROM audit_log "
            "WHERE action = 'intent.create' AND status_code = 401 AND client_ip = '127.0.0.31'"
        ).fetchone()
    checked = [r for r in rows if r[0] == 401]
    refused = [r for r in rows if r[0] == 429]
    assert len(checked) == 5  # each checked password has its row
    assert 1 <= len(refused) <= 2  # one per minute the flood spanned
    assert sum(int(d["count"]) for _, d in refused) == 55
    assert since is not None and 1 <= since[0] <= 2 and since[1] == 20


def test_submission_flood_is_rate_limited(strict_server: ApiServer) -> None:
    token = strict_server.token("carol", PASSWORD)
    with strict_server.client(token) as c:
        codes = [c.post("/intents", json={"text": f"flood {i}"}).status_code for i in range(5)]
        listed = c.get("/intents", params={"q": "flood"}).json()["items"]
    assert codes == [202, 202, 202, 429, 429]
    assert len(listed) == 3  # nothing was stored for the refused ones


def test_refresh_attempts_are_limited_per_client_address(strict_server: ApiServer) -> None:
    def refresh_from(address: str) -> int:
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(base_url=f"{strict_server.base}/api/v1", transport=transport) as c:
            r = c.post("/auth/refresh", json={"refresh_token": "qlr_guess"})
            return r.status_code

    # Guessing refresh tokens from one address runs into the limit ...
    assert [refresh_from("127.0.0.2") for _ in range(6)] == [401] * 5 + [429]
    # ... which belongs to that address, not to everyone who refreshes.
    assert refresh_from("127.0.0.3") == 401
