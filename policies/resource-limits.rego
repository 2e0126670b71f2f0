# resource-limits: CPU and memory limits on every Compose service
# (`deploy.resources.limits.cpus` and `.memory`) and every Kubernetes
# container (`resources.limits.cpu` and `.memory`), so one runaway process
# cannot starve the host (seed review: "incomplete resource limits").
package driftless.policies.resource_limits

violation contains {"object": s.id, "msg": sprintf("no %s limit; set `deploy.resources.limits.%s`", [what, key])} if {
	some s in input.services
	some key, what in {"cpus": "CPU", "memory": "memory"}
	s.limits[key] == null
}

violation contains {"object": o.id, "msg": sprintf("container %q has no %s limit; set `resources.limits.%s`", [c.name, what, key])} if {
	some o in input.kubernetes
	some c in o.workload.containers
	some key, what in {"cpu": "CPU", "memory": "memory"}
	c.limits[key] == null
}
