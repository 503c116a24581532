def search(cursor, term):
    query = "SELECT * FROM products WHERE title LIKE '%" + term + "%'"
    cursor.execute(query)
    return cursor.fetchall()
