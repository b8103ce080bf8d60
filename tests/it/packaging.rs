//! Packaging without Docker or a cluster: the Dockerfile passes hadolint and copies what the
//! build reads; the Helm chart passes `helm lint --strict`, renders (defaults and every
//! option on) to manifests that validate against the Kubernetes 1.32 schemas, and the
//! strata.toml it ships is accepted by `strata check-config`.

use std::path::Path;
use std::process::Command;

use crate::harness::python;

#[test]
fn dockerfile_and_helm_chart_pass_their_linters() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(python())
        .arg(root.join("tests/python/check_packaging.py"))
        .arg(root)
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // The certificate files the chart mounts (`cluster-tls`), present here.
    let pem = out.path().join("cluster-tls.pem");
    std::fs::write(&pem, "mounted by the chart").unwrap();
    for case in ["defaults", "everything", "cluster", "cluster-tls"] {
        let mut check = Command::new(env!("CARGO_BIN_EXE_strata"));
        check
            .args(["check-config", "--config"])
            .arg(out.path().join(format!("{case}.toml")))
            .env_remove("STRATA_CONFIG")
            // What the chart's Secret reference provides.
            .env("STRATA__AUTH__HS256_SECRET", "x".repeat(32));
        if case == "cluster" {
            // What the chart sets on the front ends.
            check
                .env("STRATA__CLUSTER__MODE", "auto")
                .env("STRATA__CLUSTER__TRANSPORT", "mesh")
                .env(
                    "STRATA__CLUSTER__SCHEDULER_URL",
                    "http://strata-scheduler.data.svc:50050",
                )
                .env("STRATA__CLUSTER__PLAN_KEY", "k".repeat(32));
        }
        if case == "cluster-tls" {
            check
                .env("STRATA__CLUSTER__MODE", "auto")
                .env("STRATA__CLUSTER__TRANSPORT", "tls")
                .env("STRATA__CLUSTER__TLS__CA_FILE", &pem)
                .env("STRATA__CLUSTER__TLS__CERT_FILE", &pem)
                .env("STRATA__CLUSTER__TLS__KEY_FILE", &pem)
                .env("STRATA__CLUSTER__TLS__SERVER_NAME", "strata-cluster")
                .env(
                    "STRATA__CLUSTER__SCHEDULER_URL",
                    "https://strata-scheduler.data.svc:50050",
                )
                .env("STRATA__CLUSTER__PLAN_KEY", "k".repeat(32));
        }
        let check = check.output().unwrap();
        assert!(
            check.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

#[test]
fn the_dockerfile_builds_what_ci_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len().saturating_sub(1)].to_vec()
        })
        .collect();
    // Everything cargo reads to build the package: the manifest, the lock, the build
    // script and its inputs, and every target the manifest declares.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
        "src",
        "benches",
        "tests",
        "config/strata.toml",
        // rust-embed's folder (src/console).
        "console/dist",
    ] {
        assert!(
            copied.contains(&needed),
            "the Dockerfile does not COPY {needed}"
        );
        assert!(root.join(needed).exists(), "{needed} is not in the repo");
    }
    for line in [
        "RUN cargo build --release --locked --bin strata",
        "USER 10001:10001",
        "EXPOSE 8080 50051",
        "HEALTHCHECK",
    ] {
        assert!(dockerfile.contains(line), "the Dockerfile lacks {line:?}");
    }
}
