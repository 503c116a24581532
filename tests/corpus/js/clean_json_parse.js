function parseSettings(text) {
  const value = JSON.parse(text);
  if (typeof value !== "object" || value === null) {
    throw new Error("settings must be an object");
  }
  return value;
}

module.exports = { parseSettings };
