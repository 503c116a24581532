def count_by_status(db, status):
    sql = "SELECT COUNT(*) FROM tickets WHERE status = '{}'".format(status)  # noqa: UP032
    return db.execute(sql).fetchone()[0]
