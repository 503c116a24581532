"""The labelled security corpus (manifest.json); labels.py reads it and scores a report."""
