"""QuantumCapsule: the signed, deterministic archive of one intent's result (docs/CAPSULE.md).

Port and data types in base.py; the format in format.py, builder.py, verify.py, extract.py
and diff.py; keys in keys.py; storage adapters in local_store.py and azure_store.py.
"""
