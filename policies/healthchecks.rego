# healthchecks: every long-running Compose service has a healthcheck, so
# `depends_on: service_healthy`, verify and rollback can tell a running
# service from a working one (seed review: "no health checks").
#
# One-shot services are exempt: `restart: "no"` or `on-failure`, or a
# service another one waits for with `condition:
# service_completed_successfully`. A healthcheck with `disable: true` or
# `test: ["NONE"]` counts as none.
package driftless.policies.healthchecks

violation contains {"object": s.id, "msg": "long-running service has no healthcheck; add `healthcheck:` (one-shot jobs: set `restart: \"no\"`)"} if {
	some s in input.services
	not s.one_shot
	s.healthcheck == null
}
