//! The README's quick start (`bash examples/quickstart/run.sh`) on the real
//! engine: it deploys the stack, reconciles again as a no-op, and previews
//! an edit as a diff. The public images it names are stood in for by
//! busybox images built here under the same names (nothing can be pulled on
//! this machine); an engine that has the real images uses those.

use crate::daemon_support::free_port;
use crate::docker_support::{Cleanup, add_file, build_image, engine, project_name};

const STAND_IN_LABEL: &str = "driftless-test.stand-in";

/// `tag` as a busybox image running `cmd`, unless the engine has `tag`.
async fn stand_in(docker: &bollard::Docker, tag: &str, cmd: &str) {
    if docker.inspect_image(tag).await.is_ok() {
        return;
    }
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = format!("FROM scratch\nCOPY rootfs/ /\nLABEL {STAND_IN_LABEL}=1\nCMD {cmd}\n");
    add_file(&mut tar, "Dockerfile", 0o644, dockerfile.as_bytes());
    add_file(&mut tar, "rootfs/bin/busybox", 0o755, &busybox);
    add_file(&mut tar, "rootfs/www/index.html", 0o644, b"quick start\n");
    add_file(&mut tar, "rootfs/tmp/.keep", 0o644, b"");
    for applet in ["sh", "httpd", "wget", "sleep"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("rootfs/bin/{applet}"), "busybox")
            .unwrap();
    }
    build_image(docker, tag, tar.into_inner().unwrap()).await;
}

#[tokio::test]
async fn the_quick_start_deploys_reconciles_as_a_no_op_and_previews_an_edit() {
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    stand_in(
        docker,
        "nginx:1.27-alpine",
        r#"["httpd", "-f", "-p", "80", "-h", "/www"]"#,
    )
    .await;
    stand_in(
        docker,
        "redis:7-alpine",
        r#"["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]"#,
    )
    .await;
    let project = project_name("quickstart");
    let _cleanup = Cleanup::new(&[&project]);
    let port = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart/run.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("DRIFTLESS", env!("CARGO_BIN_EXE_driftless"))
        .env("QUICKSTART_PROJECT", &project)
        .env("QUICKSTART_PORT", port.to_string())
        .output()
        .expect("run the quick start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let steps: Vec<&str> = stdout.split("\n== ").collect();
    assert_eq!(steps.len(), 4, "{stdout}");
    // 1: both services and the default network created, healthy.
    assert!(
        steps[0].contains("3 to create, 0 to update, 0 to recreate, 0 to delete"),
        "{stdout}"
    );
    // 2: nothing to do (the script's --detailed-exitcode would exit 2).
    assert!(
        steps[1].contains("0 to create, 0 to update, 0 to recreate, 0 to delete"),
        "{stdout}"
    );
    // 3: the edit, as a recreate of web with the diff; cache untouched.
    assert!(steps[2].contains("1 to recreate"), "{stdout}");
    assert!(
        steps[2].contains("-  GREETING: hello from driftless")
            && steps[2].contains("+  GREETING: hello again"),
        "{stdout}"
    );
    assert!(!steps[2].contains("cache  recreate"), "{stdout}");
    // The history holds the deploy.
    assert!(steps[3].contains("healthy"), "{stdout}");

    // The web service answers on the published port, as deployed (step 3
    // applied nothing).
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .expect("the page answers")
        .text()
        .await
        .unwrap();
    assert!(!page.is_empty());
    let env = docker
        .inspect_container(
            &format!("{project}-web-1"),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap()
        .config
        .and_then(|c| c.env)
        .unwrap_or_default();
    assert!(
        env.iter().any(|e| e == "GREETING=hello from driftless"),
        "{env:?}"
    );
}
