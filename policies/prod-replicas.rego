# prod-replicas: in production (an environment named `prod`, `production`
# or `prod-…`) nothing that can run twice runs once.
#
# Kubernetes Deployments: `spec.replicas` ≥ 2, or — when a
# HorizontalPodAutoscaler targets the Deployment — its `minReplicas` ≥ 2.
# Compose services: `deploy.replicas` ≥ 2, except stateful services (those
# that mount a named volume: databases and other stores), services that
# publish a fixed host port (two cannot bind it on one host) and one-shot
# jobs.
package driftless.policies.prod_replicas

violation contains {"object": o.id, "msg": sprintf("Deployment runs %d replica(s) in production; run at least 2 (spec.replicas or the HPA's minReplicas)", [n])} if {
	input.production
	some o in input.kubernetes
	o.kind == "Deployment"
	n := replicas(o)
	n < 2
}

violation contains {"object": s.id, "msg": sprintf("runs %d replica(s) in production; set `deploy.replicas` to 2 or more", [s.replicas])} if {
	input.production
	some s in input.services
	s.replicas < 2
	not s.stateful
	not s.one_shot
	not s.fixed_host_ports
}

hpa_min(o) := m if {
	some h in input.kubernetes
	h.kind == "HorizontalPodAutoscaler"
	h.namespace == o.namespace
	h.body.spec.scaleTargetRef.kind == "Deployment"
	h.body.spec.scaleTargetRef.name == o.name
	m := object.get(h.body.spec, "minReplicas", 1)
}

replicas(o) := hpa_min(o)

replicas(o) := object.get(o.body.spec, "replicas", 1) if not hpa_min(o)
