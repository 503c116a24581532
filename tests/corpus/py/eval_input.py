def calculator() -> None:
    expression = input("expression> ")
    print(eval(expression))


if __name__ == "__main__":
    calculator()
