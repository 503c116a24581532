import yaml


def read_config(path: str) -> object:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)
