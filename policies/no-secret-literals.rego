# no-secret-literals: no secret-looking literal values in environment
# variables or Kubernetes Secrets. Secrets come from `secret("name")` at
# render time (the daemon's secrets directory), never from Git; a value
# rendered from `secret()` is marked `secret: true` in the input and never
# flagged.
#
# Secret-looking: a variable whose name says password, secret, token, API
# key, private key, credential or access key with a literal value (not a
# path, URL, boolean or number), or any value that looks like a private key,
# a cloud or chat token, or a URL with a password in it.
package driftless.policies.no_secret_literals

name_pattern := `(?i)(passw(or)?d|pwd|secret|token|api_?key|private_?key|credential|access_?key)`

value_patterns := [
	`-----BEGIN [A-Z ]*PRIVATE KEY-----`,
	`AKIA[0-9A-Z]{16}`,
	`gh[pousr]_[A-Za-z0-9]{36}`,
	`xox[abposr]-[A-Za-z0-9-]{10,}`,
	`^[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]+:[^@/\s]+@`,
]

violation contains {"object": s.id, "msg": msg} if {
	some s in input.services
	some e in s.environment
	msg := problem(e)
}

violation contains {"object": o.id, "msg": sprintf("container %q: %s", [c.name, msg])} if {
	some o in input.kubernetes
	some c in o.workload.containers
	some e in c.env
	msg := problem(e)
}

violation contains {"object": o.id, "msg": sprintf("Secret holds a literal value for %q; render it with secret()", [d.key])} if {
	some o in input.kubernetes
	some d in o.secret_data
	not d.secret
}

problem(e) := sprintf("environment variable %s has a literal secret-looking value; use secret()", [e.name]) if {
	not e.secret
	looks_secret(e)
}

looks_secret(e) if {
	regex.match(name_pattern, e.name)
	not harmless(e.value)
}

looks_secret(e) if {
	some p in value_patterns
	regex.match(p, e.value)
}

harmless(v) if v == ""

harmless(v) if startswith(v, "/")

harmless(v) if regex.match(`^(?i)(true|false|yes|no|on|off|none|null|[0-9.]+)$`, v)

harmless(v) if {
	regex.match(`^[a-zA-Z][a-zA-Z0-9+.-]*://`, v)
	not regex.match(`^[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]+:[^@/\s]+@`, v)
}
