from flask import Flask, request

app = Flask(__name__)


@app.post("/run")
def run_snippet():
    code = request.form["code"]
    exec(code)
    return "ok"
