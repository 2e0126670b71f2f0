# non-root: containers run as a non-root user (seed review: "weak container
# security"; its Dockerfile runs as a non-root user).
#
# Compose: `user:` is set and is not root (`root`, `0`, `root:…`, `0:…`).
# Kubernetes: the effective securityContext (container over pod) has
# `runAsNonRoot: true` or a non-zero `runAsUser`, and no `runAsUser: 0`.
package driftless.policies.non_root

violation contains {"object": s.id, "msg": "runs as the image's default user (usually root); set a non-root `user:`"} if {
	some s in input.services
	s.user == null
}

violation contains {"object": s.id, "msg": sprintf("runs as root (`user: %s`); set a non-root user", [s.user])} if {
	some s in input.services
	is_string(s.user)
	root_user(s.user)
}

root_user(u) if u == "root"
root_user(u) if u == "0"
root_user(u) if startswith(u, "root:")
root_user(u) if startswith(u, "0:")

violation contains {"object": o.id, "msg": sprintf("container %q runs as root (runAsUser: 0)", [c.name])} if {
	some o in input.kubernetes
	some c in o.workload.containers
	c.run_as_user == 0
}

violation contains {"object": o.id, "msg": sprintf("container %q may run as root; set securityContext.runAsNonRoot: true or a non-zero runAsUser", [c.name])} if {
	some o in input.kubernetes
	some c in o.workload.containers
	c.run_as_non_root != true
	not positive(c.run_as_user)
}

positive(n) if {
	is_number(n)
	n > 0
}
