const { execFile } = require("node:child_process");

function listFolder(folder, callback) {
  execFile("ls", ["-la", "--", folder], (err, stdout) => callback(err, stdout));
}

module.exports = { listFolder };
