import sqlite3


def delete_order(conn: sqlite3.Connection, order_id: str) -> None:
    conn.execute(f"DELETE FROM orders WHERE id = {order_id}")
    conn.commit()
