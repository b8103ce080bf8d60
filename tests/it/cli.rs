//! The `strata` binary: zero-config `serve`, `token`, `check-config`, SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_strata");

/// Starts `strata` with no config file in an empty directory (ports overridden to 0 so
/// parallel tests don't collide) and reads the banner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_serve_prints_a_working_admin_token_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env("STRATA__SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("STRATA__SERVER__FLIGHT_ADDR", "127.0.0.1:0")
        .env_remove("STRATA_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = crate::harness::line_channel(child.stdout.take().unwrap());
    let (mut http, mut token) = (None, None);
    while http.is_none() || token.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("banner");
        if let Some(rest) = line.trim().strip_prefix("REST") {
            http = rest.split_whitespace().next().map(str::to_string);
        } else if line.starts_with("eyJ") {
            token = Some(line.trim().to_string());
        }
    }
    let (http, token) = (http.unwrap(), token.unwrap());
    assert!(dir.path().join("data/dev-secret").exists());
    assert!(dir.path().join("data/warehouse").is_dir());
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{http}/api/v1/tables"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // `strata token` from the same directory mints tokens the server accepts.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "token",
            "--sub",
            "ann",
            "--role",
            "admin",
            "--claim",
            "tenant=acme",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap();
    assert_eq!(minted.lines().count(), 1, "token prints only the token");
    let r = client
        .get(format!("{http}/api/v1/tables"))
        .bearer_auth(minted.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "SIGTERM should exit 0, got {exit:?}");
}

#[test]
fn check_config_prints_redacted_config_and_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[auth]\nmode = \"jwt\"\nhs256_secret = \"a-very-long-secret-value-of-more-than-32-bytes\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("hs256_secret = \"<redacted>\""), "{text}");
    assert!(!text.contains("a-very-long-secret"));
    assert!(text.contains("http_addr = \"127.0.0.1:8080\""));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nhttp_addr = \"0.0.0.0:8080\"\n[query]\ndefault_layer = \"platinum\"\n[auth]\nalgorithms = [\"none\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches("problem:").count(), 3, "{err}");
    assert!(
        err.contains("loopback") && err.contains("platinum") && err.contains("none"),
        "{err}"
    );

    // Pipelines of [pipelines] dir: cron patterns and time zones are checked too.
    let pipelines = dir.path().join("pipelines");
    for (name, trigger) in [
        (
            "nightly",
            "schedule = \"0 2 * * *\"\ntimezone = \"Europe/Berlin\"",
        ),
        ("typo", "schedule = \"0 25 * * *\""),
        (
            "nowhere",
            "schedule = \"0 2 * * *\"\ntimezone = \"Europe/Atlantis\"",
        ),
    ] {
        let p = pipelines.join(name);
        std::fs::create_dir_all(p.join("silver")).unwrap();
        std::fs::write(
            p.join("pipeline.toml"),
            format!("run_as = \"etl\"\n[trigger]\n{trigger}\n"),
        )
        .unwrap();
        std::fs::write(p.join("silver/t.sql"), "SELECT 1 AS x").unwrap();
    }
    // A model's own trigger is checked the same way.
    let p = pipelines.join("hourly");
    std::fs::create_dir_all(p.join("silver")).unwrap();
    std::fs::write(p.join("pipeline.toml"), "run_as = \"etl\"\n").unwrap();
    std::fs::write(
        p.join("silver/t.sql"),
        "/* strata\n[trigger]\nschedule = \"0 * * 13 *\"\n*/\nSELECT 1 AS x",
    )
    .unwrap();
    let scheduled = dir.path().join("scheduled.toml");
    std::fs::write(
        &scheduled,
        format!("[pipelines]\ndir = {:?}\n", pipelines.display().to_string()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&scheduled)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches("problem:").count(), 3, "{err}");
    assert!(
        err.contains("0 25 * * *")
            && err.contains("Europe/Atlantis")
            && err.contains("0 * * 13 *")
            && !err.contains("nightly"),
        "{err}"
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[server]\nhttp_adr = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_adr"));

    let out = Command::new(BIN)
        .args(["check-config"])
        .current_dir(dir.path())
        .env("STRATA__AUTH__MODE", "jwt")
        .output()
        .unwrap();
    assert!(!out.status.success(), "jwt mode without keys is refused");
}

#[test]
fn serve_refuses_unsafe_setups() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env("STRATA__SERVER__HTTP_ADDR", "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}
