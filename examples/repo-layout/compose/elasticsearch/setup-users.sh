#!/usr/bin/env bash
# Run by the elasticsearch-setup service (a one-shot job) on every deploy that
# changes it. Idempotent: sets the kibana_system password and creates or
# updates the logstash_writer role and user. Passwords come from the
# container's environment (secret() values in ../stack.yaml.j2).
set -euo pipefail

es=http://elasticsearch:9200
auth="elastic:${ELASTIC_PASSWORD}"

request() {
  # request METHOD PATH JSON-BODY
  curl --fail --silent --show-error --user "$auth" \
    --header 'Content-Type: application/json' \
    --request "$1" "$es$2" --data "$3" >/dev/null
}

echo "waiting for elasticsearch"
until curl --fail --silent --user "$auth" \
  "$es/_cluster/health?wait_for_status=yellow&timeout=10s" >/dev/null; do
  sleep 5
done

echo "setting the kibana_system password"
request POST /_security/user/kibana_system/_password \
  "{\"password\": \"${KIBANA_SYSTEM_PASSWORD}\"}"

echo "creating the logstash_writer role"
request PUT /_security/role/logstash_writer '{
  "cluster": ["monitor", "manage_index_templates"],
  "indices": [{
    "names": ["aiops-logs-*"],
    "privileges": ["create_index", "create", "write", "auto_configure"]
  }]
}'

echo "creating the logstash_writer user"
request PUT /_security/user/logstash_writer \
  "{\"password\": \"${LOGSTASH_WRITER_PASSWORD}\", \"roles\": [\"logstash_writer\"], \"full_name\": \"Logstash\"}"

echo "done"
