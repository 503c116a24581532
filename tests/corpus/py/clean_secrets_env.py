import os

DB_PASSWORD_VARIABLE = "APP_DB_PASSWORD"
PASSWORD_MIN_LENGTH = 12


def db_password() -> str:
    password = os.environ[DB_PASSWORD_VARIABLE]
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValueError("the database password is too short")
    return password
