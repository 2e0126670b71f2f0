# no-privileged: no privileged containers and no host network. Either gives
# a container the host; where one is really needed, say why with an
# exception on the object.
package driftless.policies.no_privileged

violation contains {"object": s.id, "msg": "runs privileged (`privileged: true`)"} if {
	some s in input.services
	s.privileged == true
}

violation contains {"object": s.id, "msg": "uses the host network (`network_mode: host`)"} if {
	some s in input.services
	s.network_mode == "host"
}

violation contains {"object": o.id, "msg": sprintf("container %q runs privileged (securityContext.privileged: true)", [c.name])} if {
	some o in input.kubernetes
	some c in o.workload.containers
	c.privileged == true
}

violation contains {"object": o.id, "msg": "uses the host network (hostNetwork: true)"} if {
	some o in input.kubernetes
	o.workload.host_network == true
}
