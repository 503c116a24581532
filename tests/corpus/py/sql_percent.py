import sqlite3


def find_user(conn: sqlite3.Connection, name: str) -> list[tuple[str, str]]:
    cur = conn.cursor()
    cur.execute("SELECT id, name FROM users WHERE name = '%s'" % name)  # noqa: UP031
    return cur.fetchall()
