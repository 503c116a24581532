import psycopg

DB_PASSWORD = "s3cr3t-Passw0rd!"


def connect():
    return psycopg.connect(host="db", user="app", password=DB_PASSWORD)
