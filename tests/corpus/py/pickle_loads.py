import pickle


def restore_session(blob: bytes) -> dict:
    return pickle.loads(blob)
