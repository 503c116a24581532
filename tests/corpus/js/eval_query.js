const http = require("node:http");

http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  const result = eval(url.searchParams.get("expr"));
  res.end(String(result));
}).listen(8080);
