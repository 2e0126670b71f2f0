//! `deploy/kubernetes/` stays valid: driftless's own Kubernetes loader and
//! every built-in policy, as gates, pass on the manifests it ships for
//! running itself.

use crate::support::RepoBuilder;

#[test]
fn the_shipped_kubernetes_manifests_pass_every_policy_as_a_gate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let policies = [
        "pinned-images",
        "healthchecks",
        "readiness-probes",
        "resource-limits",
        "non-root",
        "no-privileged",
        "prod-replicas",
        "no-secret-literals",
    ];
    let modes: Vec<String> = policies.iter().map(|p| format!("{p}: deny")).collect();
    let manifest = format!(
        "apiVersion: driftless/v1\npolicies: {{ {} }}\ntargets:\n  cluster:\n    kubernetes: {{ namespace: driftless }}\nenvironments:\n  prod:\n    targets: [cluster]\n",
        modes.join(", ")
    );
    let mut repo = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/prod.yaml", "{}\n");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        repo = repo.file(&format!("kubernetes/{name}"), std::fs::read(&path).unwrap());
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "configmap.yaml",
            "deployment.yaml",
            "rbac.yaml",
            "service.yaml",
            "serviceaccount.yaml"
        ]
    );
    let run = repo.driftless(&["validate", "--output", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report["environments"][0]["objects"], 10,
        "every object loaded: {report:#}"
    );
    let text = report.to_string();
    assert!(
        !text.contains("\"severity\":\"warning\""),
        "no warnings: {report:#}"
    );
}
