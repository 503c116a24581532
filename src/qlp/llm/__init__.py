"""The LLM port (base.py) and its adapters."""
