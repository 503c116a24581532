"""The store's hot-path writes, each one SQL statement run in autocommit mode.

They are plain SQL in the driver's parameter style (`%(name)s`), run with
`exec_driver_sql`: on the hot path SQLAlchemy's statement compilation is pure overhead.

A task's life touches the intents row (its event counter and totals) several times, and
with many tasks running at once that row is where they queue. Doing each change as a single
statement (data-modifying CTEs) makes it atomic by itself and holds the row lock only while
PostgreSQL executes it, never across a round trip to Python.

Every statement is fenced by the intent's lease (store/leases.py): `%(lease)s` is the epoch
the writing process holds, or NULL for a process that holds none (an API cancelling an
intent nobody runs). The `held` CTE locks the intents row and checks the epoch in the same
statement as the write, so a worker that was paused while another took the intent over
writes nothing after it resumes: the statement reports `held` false and changes no row.
"""

from __future__ import annotations

# The channel every process LISTENs on (engine/relay.py) to hear of events it did not commit.
EVENTS_CHANNEL = "qlp_events"

# The fence: the intents row, locked, if the caller's lease (or none) is the current one.
# FOR UPDATE reads the latest committed row, waiting for a claim in progress, so a claim
# and a write of the old holder are ordered one way or the other, never interleaved.
_HELD = """
    held AS (
        SELECT true AS held FROM intents
        WHERE id = %(intent_id)s
          AND (CAST(%(lease)s AS bigint) IS NULL OR lease = CAST(%(lease)s AS bigint))
        FOR UPDATE
    )"""
HELD = "EXISTS (SELECT 1 FROM held)"

# Numbers and inserts events given as a JSON array [{"type", "payload"}, ...]; used by all
# statements below as their tail. `s` must return the new event_seq.
#
# The same statement NOTIFYs `qlp_events` with "<intent id> <first seq> <last seq>" (never
# the bodies: the payload limit is 8000 bytes). PostgreSQL delivers it at commit, so a
# listener never hears of rows it cannot yet read, and no notice goes out for a rollback.
# `n` is a CTE of a volatile function, so it is evaluated once, not once per event row; the
# INSERT references it so that it runs at all (an unreferenced SELECT CTE would not).
_EVENTS_TAIL = (
    """
    WITH n AS (
        SELECT pg_notify('"""
    + EVENTS_CHANNEL
    + """', CAST(%(intent_id)s AS text) || ' '
                         || (s.event_seq - %(n_events)s + 1) || ' ' || s.event_seq)
        FROM s
    )
    INSERT INTO events (intent_id, seq, type, at, payload)
    SELECT CAST(%(intent_id)s AS varchar), s.event_seq - %(n_events)s + e.ord,
           e.value->>'type', CAST(%(now)s AS timestamptz), e.value->'payload'
    FROM s, n, jsonb_array_elements(CAST(%(events)s AS jsonb)) WITH ORDINALITY AS e(value, ord)
"""
)

# Move tasks to a new status (all of them or none: every task must be in an allowed source
# state), upsert the files they wrote, and record the events. Returns ok and event_seq.
MOVE_TASKS = (
    "WITH"
    + _HELD
    + """, ok AS (
        SELECT """
    + HELD
    + """ AND count(*) = %(n_tasks)s AS ok FROM tasks
        WHERE intent_id = %(intent_id)s AND id = ANY(CAST(%(ids)s AS varchar[]))
          AND status = ANY(CAST(%(allowed)s AS varchar[]))
    ), moved AS (
        UPDATE tasks SET
            status = %(status)s,
            error = CAST(%(error)s AS text),
            notes = COALESCE(CAST(%(notes)s AS text), notes),
            attempts = attempts + %(attempt_inc)s,
            started_at = CASE CAST(%(clock)s AS text)
                WHEN 'start' THEN CAST(%(now)s AS timestamptz)
                WHEN 'reset' THEN NULL ELSE started_at END,
            finished_at = CASE CAST(%(clock)s AS text)
                WHEN 'finish' THEN CAST(%(now)s AS timestamptz) ELSE NULL END
        WHERE intent_id = %(intent_id)s AND id = ANY(CAST(%(ids)s AS varchar[]))
          AND (SELECT ok FROM ok)
        RETURNING id
    ), written AS (
        INSERT INTO files (intent_id, path, sha256, size, task_id, updated_at)
        SELECT %(intent_id)s, f->>'path', f->>'sha256', CAST(f->>'size' AS bigint),
               f->>'task_id', CAST(%(now)s AS timestamptz)
        FROM jsonb_array_elements(CAST(%(files)s AS jsonb)) AS f
        WHERE (SELECT ok FROM ok)
        ON CONFLICT (intent_id, path) DO UPDATE SET
            sha256 = EXCLUDED.sha256, size = EXCLUDED.size,
            task_id = EXCLUDED.task_id, updated_at = EXCLUDED.updated_at
    ), s AS (
        UPDATE intents SET event_seq = event_seq + %(n_events)s
        WHERE id = %(intent_id)s AND (SELECT ok FROM ok)
        RETURNING event_seq
    ), ins AS ("""
    + _EVENTS_TAIL
    + """)
    SELECT (SELECT ok FROM ok) AS ok, """
    + HELD
    + """ AS held, (SELECT event_seq FROM s) AS event_seq
    """
)

# Keep one model call in the transcript, add it to the task's and intent's totals, and
# emit llm.usage.
RECORD_CALL = (
    "WITH"
    + _HELD
    + """, call AS (
        INSERT INTO llm_calls (intent_id, task_id, purpose, provider, model, request, response,
                               error, input_tokens, output_tokens, cost_usd, latency_ms,
                               attempts, created_at)
        SELECT %(intent_id)s, %(task_id)s, %(purpose)s, %(provider)s, %(model)s,
               CAST(%(request)s AS jsonb), %(response)s, %(error)s, %(in_tok)s, %(out_tok)s,
               CAST(%(cost)s AS numeric), %(latency_ms)s, %(attempts)s,
               CAST(%(now)s AS timestamptz)
        WHERE """
    + HELD
    + """
    ), per_task AS (
        UPDATE tasks SET
            input_tokens = input_tokens + %(in_tok)s,
            output_tokens = output_tokens + %(out_tok)s
        WHERE intent_id = %(intent_id)s AND id = CAST(%(task_id)s AS varchar) AND """
    + HELD
    + """
    ), s AS (
        UPDATE intents SET
            event_seq = event_seq + %(n_events)s,
            input_tokens = input_tokens + %(in_tok)s,
            output_tokens = output_tokens + %(out_tok)s,
            cost_usd = cost_usd + COALESCE(CAST(%(cost)s AS numeric), 0),
            unpriced_calls = unpriced_calls
                + CASE WHEN CAST(%(cost)s AS numeric) IS NULL THEN 1 ELSE 0 END,
            llm_calls = llm_calls + 1
        WHERE id = %(intent_id)s AND """
    + HELD
    + """
        RETURNING event_seq, input_tokens, output_tokens, cost_usd, unpriced_calls, llm_calls
    ), ins AS ("""
    + _EVENTS_TAIL
    + """)
    SELECT * FROM s
    """
)

# Events alone (used inside ordinary transactions, as their last statement).
APPEND_EVENTS = (
    "WITH"
    + _HELD
    + """, s AS (
        UPDATE intents SET event_seq = event_seq + %(n_events)s
        WHERE id = %(intent_id)s AND """
    + HELD
    + """
        RETURNING event_seq
    ), ins AS ("""
    + _EVENTS_TAIL
    + """)
    SELECT event_seq FROM s
    """
)

# Store a new plan: its tasks (pending), the plan on the intent, status executing, and the
# event. Only when the intent may go to executing and has no tasks yet (re-planning over
# existing tasks takes the slower transaction in repository.py). Returns ok and event_seq.
# Its fence is `cur` (the row locked only if the lease is current).
SAVE_PLAN = (
    """
    WITH cur AS (
        SELECT status FROM intents
        WHERE id = %(intent_id)s
          AND (CAST(%(lease)s AS bigint) IS NULL OR lease = CAST(%(lease)s AS bigint))
        FOR UPDATE
    ), ok AS (
        SELECT COALESCE((SELECT status FROM cur) = ANY(CAST(%(allowed)s AS varchar[])), false)
               AND NOT EXISTS (SELECT 1 FROM tasks WHERE intent_id = %(intent_id)s) AS ok
    ), added AS (
        INSERT INTO tasks (intent_id, id, type, title, description, dependencies, priority,
                           acceptance_criteria, position, status)
        SELECT %(intent_id)s, t->>'id', t->>'type', t->>'title', t->>'description',
               t->'dependencies', CAST(t->>'priority' AS integer), t->'acceptance_criteria',
               CAST(t->>'position' AS integer), %(status)s
        FROM jsonb_array_elements(CAST(%(tasks)s AS jsonb)) AS t
        WHERE (SELECT ok FROM ok)
    ), s AS (
        UPDATE intents SET
            plan = CAST(%(plan)s AS jsonb),
            status = %(intent_status)s,
            updated_at = CAST(%(now)s AS timestamptz),
            event_seq = event_seq + %(n_events)s
        WHERE id = %(intent_id)s AND (SELECT ok FROM ok)
        RETURNING event_seq
    ), ins AS ("""
    + _EVENTS_TAIL
    + """)
    SELECT (SELECT ok FROM ok) AS ok, (SELECT event_seq FROM s) AS event_seq
    """
)
