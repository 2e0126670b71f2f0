// Runs once, when the mongo image initialises an empty data directory
// (/docker-entrypoint-initdb.d/), as the root user. Creates the user the
// api-gateway connects as; its password is MONGODB_APP_PASSWORD, set from
// secret("mongodb_app_password") in ../../stack.yaml.j2.
const password = process.env.MONGODB_APP_PASSWORD;
if (!password) {
  throw new Error("MONGODB_APP_PASSWORD is not set");
}
db.getSiblingDB("aiops").createUser({
  user: "aiops",
  pwd: password,
  roles: [{ role: "readWrite", db: "aiops" }],
});
