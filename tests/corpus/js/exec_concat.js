const { exec } = require("node:child_process");

function listFolder(folder, callback) {
  exec("ls -la " + folder, (err, stdout) => callback(err, stdout));
}

module.exports = { listFolder };
