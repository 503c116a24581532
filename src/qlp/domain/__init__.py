"""Pure data and rules: ids, states, plans, artifacts, events. Imports nothing else of qlp."""
