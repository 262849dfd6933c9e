# Least-privilege ACL policy for jailsyncd in catalog mode (consul.mode = "catalog").
#
#   consul acl policy create -name jailsyncd-catalog -rules @docs/acl/catalog-mode.hcl
#   consul acl token create -description "jailsyncd on $(hostname)" -policy-name jailsyncd-catalog
#
# Put the token's SecretID into consul.token_file (mode 0600, owned by the user
# jailsyncd runs as). Checked against Consul 1.8.7 with default_policy = "deny" by
# tests/integration/test_acl_shipped_policies.py, which loads exactly this file and
# runs once, run and check-config --online with it.
#
# What jailsyncd calls in catalog mode (on any agent or server), and the rule each
# one needs:
#
#   GET /v1/catalog/nodes?node-meta=...   node:read on this host's nodes
#   GET /v1/health/state/any?node-meta=.. node:read and service:read on their checks
#   PUT /v1/txn (read-only Service get)   service:read on their services (Consul
#                                         silently leaves out what the token may
#                                         not read)
#   GET /v1/catalog/node-services/NODE    node:read and service:read: one of our
#                                         nodes read alone (a node changed by hand),
#                                         and each node before it is deleted (a
#                                         service the token may not read is not
#                                         seen, so not kept: keep service read)
#   GET /v1/catalog/services?node-meta=.. node:read and service:read: run's Consul
#                                         watch (sync.watch_consul), a blocking
#                                         query on our nodes' services
#   PUT /v1/txn (read-only Node get)      nothing more: whether each name a cycle
#                                         wants to create is held by someone else
#                                         (Consul 1.8 answers a get whatever the
#                                         token may read); when an answer cannot
#                                         tell, the same question through
#   GET /v1/catalog/node/<name>, or
#   GET /v1/catalog/nodes?filter=...      node:read on those names (see below)
#   PUT /v1/txn                           node:write on each node it creates (cas),
#                                         changes or deletes, and for the ping check
#                                         (a node check); service:write on the name
#                                         of each service and of each TCP/HTTP check
#                                         (service checks) it writes
#
# Node names come from catalog.node_name (default "{fqdn}": each jail's
# host_hostname) and service names from the jails (consul.name=, [[rule]] names),
# so neither is known in advance: hence the empty prefixes. jailsyncd itself never
# writes a node or service that does not carry its own jailsyncd-owner meta.
#
# To narrow it:
#   - nodes: keep node_prefix "" { policy = "read" } and grant write per node name
#     (node "db1.example.org" { policy = "write" }), or per common prefix when
#     catalog.node_name starts with a fixed text ("jail-{jname}": node_prefix "jail-").
#     A name held by another owner is skipped as a conflict even without read on
#     it (the Node get above); only if Consul would not answer those gets, and
#     without read on every node, is such a name invisible, and that jail's write
#     fails (exit 77) instead of being skipped.
#   - services: with catalog.layout = "article" every jail is the service "jail",
#     so service "jail" { policy = "write" } is enough; otherwise one block per name
#     or a common prefix.
# jailsyncd check-config --online asks Consul for every name this host needs now.

node_prefix "" {
  policy = "write"
}

service_prefix "" {
  policy = "write"
}
