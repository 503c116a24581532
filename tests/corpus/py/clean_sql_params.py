import sqlite3


def find_user(conn: sqlite3.Connection, name: str) -> list[tuple[str, str]]:
    cur = conn.cursor()
    cur.execute("SELECT id, name FROM users WHERE name = ?", (name,))
    return cur.fetchall()


def delete_order(conn: sqlite3.Connection, order_id: int) -> None:
    conn.execute("DELETE FROM orders WHERE id = ?", (order_id,))
    conn.commit()
