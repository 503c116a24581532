import requests

SETTINGS = {"endpoint": "https://api.example.com", "api_key": "sk-live-4f9a8b7c6d5e4f3a"}


def fetch(path):
    headers = {"Authorization": "Bearer " + SETTINGS["api_key"]}
    return requests.get(SETTINGS["endpoint"] + path, headers=headers, timeout=10)
