import ast


def parse_number_list(text: str) -> list[int]:
    value = ast.literal_eval(text)
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ValueError("expected a list of integers")
    return value
