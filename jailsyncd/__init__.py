"""jailsyncd: keep HashiCorp Consul in step with the jails and VMs of a CBSD host.

The package is layered; each module's docstring says its role and who calls it:

- pure core: ``model``, ``addresses``, ``naming``, ``tagspec``, ``desired``, ``plan``
- adapters (one per outside system): ``adapters.cbsd``, ``adapters.consul``
- orchestration: ``reconcile`` (one cycle), ``cli`` (the only place that exits) with ``commands``
- support: ``settings``, ``errors``, ``logs``, ``sample`` (example CBSD workdirs)
"""

__version__ = "0.1.0"
