import requests


def download(url: str) -> bytes:
    return requests.get(url, verify=False, timeout=30).content
