# pinned-images: every image names a version — a tag other than `latest`,
# or a digest. An untagged image means `latest`, which changes under a
# running stack and cannot be rolled back to (seed review: "unpinned image
# versions").
#
# Applies to: Compose services, Kubernetes workload containers (init
# containers included). A service built from the commit (`build:`) is
# pinned by the commit itself, and rolled back to its built image id.
package driftless.policies.pinned_images

violation contains {"object": s.id, "msg": msg} if {
	some s in input.services
	not s.built
	msg := problem(s.image)
}

violation contains {"object": o.id, "msg": sprintf("container %q: %s", [c.name, msg])} if {
	some o in input.kubernetes
	some c in o.workload.containers
	msg := problem(c.image)
}

problem(image) := sprintf("image %q has no tag, which means `latest`; pin a version", [image]) if {
	not contains(image, "@")
	not has_tag(image)
}

problem(image) := sprintf("image %q uses the `latest` tag; pin a version", [image]) if {
	not contains(image, "@")
	tag(image) == "latest"
}

# The tag follows a ":" in the last path component (a registry port is in
# the first one).
has_tag(image) if tag(image)

tag(image) := t if {
	parts := split(image, "/")
	last := parts[count(parts) - 1]
	contains(last, ":")
	t := split(last, ":")[1]
}
