"""Adapters: one module per outside system, each hiding its third-party library.

- ``cbsd``: reads CBSD's SQLite DBs (the only module that imports SQLAlchemy);
- ``consul``: reads and writes Consul (the only module that imports python-consul2).
"""
