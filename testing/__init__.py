"""Helpers for jailsyncd's tests, demo and benchmark; never installed on a host.

- ``sample``: CBSD workdirs shaped exactly like CBSD's (schema in ``data/*.sql``);
- ``devconsul``: a real Consul dev agent on loopback;
- ``devnet``: network namespaces with addresses to ping (Linux).

Imported by ``tests/`` (pytest puts the repository on ``sys.path``), ``scripts/demo.py``
and ``bench/``; left out of the wheel (pyproject.toml lists only ``jailsyncd``).
"""
