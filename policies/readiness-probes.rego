# readiness-probes: every container of a long-running Kubernetes workload
# (Deployment, StatefulSet, DaemonSet) has a readinessProbe, so a rollout
# sends traffic only to pods that can serve it and verify can judge it.
package driftless.policies.readiness_probes

long_running := {"Deployment", "StatefulSet", "DaemonSet"}

violation contains {"object": o.id, "msg": sprintf("container %q has no readinessProbe", [c.name])} if {
	some o in input.kubernetes
	long_running[o.kind]
	some c in o.workload.containers
	not c.init
	not c.readiness_probe
}
