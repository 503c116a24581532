"""One module per tool family; each returns CheckResults (docs/VALIDATION.md)."""
