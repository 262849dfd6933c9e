# Least-privilege ACL policy for jailsyncd in agent mode (consul.mode = "agent").
#
#   consul acl policy create -name jailsyncd-agent -rules @docs/acl/agent-mode.hcl
#   consul acl token create -description "jailsyncd on $(hostname)" -policy-name jailsyncd-agent
#
# Put the token's SecretID into consul.token_file (mode 0600, owned by the user
# jailsyncd runs as). Checked against Consul 1.8.7 with default_policy = "deny" by
# tests/integration/test_acl_policy.py and test_acl_shipped_policies.py, which load
# exactly this file and run check-config --online, once, run and purge with it.
#
# What jailsyncd calls on the local agent, and the rule each one needs:
#
#   GET /v1/agent/services                service:read  (Consul silently leaves out every
#                                         service the token may not read, so a token
#                                         without read sees nothing, and jailsyncd
#                                         then removes nothing)
#   GET /v1/agent/checks                  service:read for service checks (node checks
#                                         such as serfHealth are left out without
#                                         node:read; jailsyncd never looks at them)
#   PUT /v1/agent/service/register        service:write on the service's name (its
#                                         TTL and alias checks come with it)
#   PUT /v1/agent/service/deregister/ID   service:write on the service's name
#   PUT /v1/agent/check/update/ID         service:write on the name of the check's
#                                         service (health on: jail checks and the
#                                         "jailsyncd" heartbeat service)
#   PUT /v1/agent/check/deregister/ID     service:write on the name of the check's
#                                         service (a probe dropped from a jail, or
#                                         health turned off: Consul keeps the checks a
#                                         new registration does not list)
#   GET /v1/agent/self                    agent:read (once: the agent's node name,
#                                         for the Consul watch, sync.watch_consul)
#   GET /v1/catalog/node-services/NODE    node:read on the agent's node (the Consul
#                                         watch's blocking query; without node:read
#                                         Consul answers with no node at all)
#
# No node write is needed: jailsyncd never writes node entries in agent mode, and
# the agent syncs services and their checks to the catalog with the token that
# registered them, for which service:write is enough (the agent's own node entry is
# synced with the agent's token, acl.tokens.agent, not with this one). The two read
# rules below are for the Consul watch only: without them it logs
# consul_watch_failed and a change made in Consul by hand waits for the periodic
# cycle. To narrow them, name the agent's node: agent "NODE" and node "NODE".
#
# Service names are not known in advance (jail names, consul.name=, [[rule]] names),
# hence the empty prefix. To narrow it, replace the prefix with one block per name
# (service "www" { policy = "write" }) or a common prefix, and keep
# service "jailsyncd" { policy = "write" } when [health] is enabled. A jail whose
# name the token may not write fails alone: its registration is refused
# (action_failed; once exits 77 naming it), every other jail is still written
# (see docs/reliability.md). check-config --online names the names it lacks.

service_prefix "" {
  policy = "write"
}

agent_prefix "" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
