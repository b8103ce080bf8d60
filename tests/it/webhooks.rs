//! Webhooks against the real server: definitions over REST, deliveries signed as the
//! senders sign them (the vectors of their documentation where they publish one), answered
//! only once their commit landed, written exactly once.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use strata::config::{Config, GrantConfig, SecretRef, ServicePrincipalConfig};

use crate::harness::{Backend, StrataProcess, TestServer, armed, message};

/// The Standard Webhooks reference vector (standard-webhooks' library tests).
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: i64 = 1614265330;
const SW_BODY: &str = r#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
/// GitHub's documented example ("Validating webhook deliveries").
const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &str = "Hello, World!";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// Secrets in files under `dir`, the writer `ingest` (INSERT on bronze), and the config
/// naming them.
fn with_ingest(cfg: &mut Config, dir: &Path) {
    for (name, value) in [
        ("sw", SW_SECRET),
        ("sw_old", "whsec_c2VjcmV0LXRoYXQtd2FzLXJvdGF0ZWQtb3V0"),
        ("gh", GH_SECRET),
        ("gh_new", "the next GitHub secret"),
        ("stripe", "whsec_stripe_test"),
        ("plain", "k"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        cfg.connectors.secrets.push(SecretRef {
            name: name.into(),
            env: None,
            file: Some(path),
        });
    }
    cfg.pipelines.principals = vec![ServicePrincipalConfig {
        name: "ingest".into(),
        roles: vec!["ingest".into()],
        claims: BTreeMap::new(),
    }];
    cfg.access.grants.push(GrantConfig {
        role: "ingest".into(),
        privilege: "INSERT".into(),
        on: "bronze".into(),
    });
}

async fn server() -> (TestServer, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let s =
        TestServer::start_configured(Backend::Local, |cfg| with_ingest(cfg, secrets.path())).await;
    (s, secrets)
}

async fn define(s: &TestServer, name: &str, spec: Value) -> Value {
    let (status, body) = s
        .put_json(&s.admin.clone(), &format!("/api/v1/webhooks/{name}"), spec)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn deliver(
    s: &TestServer,
    name: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(s.url(&format!("/api/v1/ingest/webhooks/{name}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    crate::harness::status_json(r.send().await.unwrap()).await
}

fn hex_hmac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

/// A Standard Webhooks delivery signed with `secret` at `ts`.
fn standard(secret: &str, id: &str, ts: i64, body: &str) -> Vec<(&'static str, String)> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut m = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    m.update(format!("{id}.{ts}.{body}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", format!("v1,{sig}")),
    ]
}

fn stripe(secret: &str, ts: i64, body: &str) -> Vec<(&'static str, String)> {
    let sig = hex_hmac(
        secret.as_bytes(),
        &[ts.to_string().as_bytes(), b".", body.as_bytes()],
    );
    vec![("stripe-signature", format!("t={ts},v1={sig}"))]
}

fn spec(table: &str, scheme: &str, secrets: &[&str]) -> Value {
    json!({"table": table, "scheme": scheme, "secrets": secrets, "run_as": "ingest",
           "commit_window_ms": 20})
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheme_accepts_its_documented_signature_once_and_refuses_everything_else() {
    // The Standard Webhooks vector is signed in 2021: the server's clock is set there.
    let secrets = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(strata::clock::ManualClock::new(
        chrono::DateTime::from_timestamp(SW_TS + 10, 0).unwrap(),
    ));
    let s = TestServer::start_clocked(
        Backend::Local,
        |cfg| with_ingest(cfg, secrets.path()),
        clock,
    )
    .await;
    let mut hmac_spec = spec("bronze.generic", "hmac", &["plain"]);
    hmac_spec["signature_header"] = json!("X-Signature");
    for (name, spec) in [
        (
            "sw",
            spec("bronze.sw_events", "standard_webhooks", &["sw_old", "sw"]),
        ),
        ("gh", spec("bronze.gh_events", "github", &["gh_new", "gh"])),
        (
            "stripe",
            spec("bronze.stripe_events", "stripe", &["stripe"]),
        ),
        ("generic", hmac_spec),
    ] {
        let stored = define(&s, name, spec).await;
        assert_eq!(stored["version"], 0);
    }

    // Standard Webhooks: the reference vector lands once; its redelivery is a duplicate.
    let sw = vec![
        ("webhook-id", SW_ID.to_string()),
        ("webhook-timestamp", SW_TS.to_string()),
        ("webhook-signature", SW_SIG.to_string()),
    ];
    let (status, body) = deliver(&s, "sw", &sw, SW_BODY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], false);
    assert_eq!(body["delivery_id"], SW_ID);
    let (status, body) = deliver(&s, "sw", &sw, SW_BODY).await;
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(true)),
        "{body}"
    );
    // The older of the two rotated secrets verifies too.
    let old = standard(
        "whsec_c2VjcmV0LXRoYXQtd2FzLXJvdGF0ZWQtb3V0",
        "msg_2",
        SW_TS,
        "{}",
    );
    assert_eq!(deliver(&s, "sw", &old, "{}").await.0, 200);
    // A signature made ten minutes ago verifies, but is stale: 400, nothing written.
    let stale = standard(SW_SECRET, "msg_3", SW_TS - 600, "{}");
    let (status, body) = deliver(&s, "sw", &stale, "{}").await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("at most 300 s"), "{body}");
    // A changed body does not verify: 401.
    let (status, bad) = deliver(&s, "sw", &sw, r#"{"test": 1}"#).await;
    assert_eq!(status, 401, "{bad}");
    let rows = s
        .sql_ok("SELECT _delivery_id, _webhook, body FROM bronze.sw_events ORDER BY _delivery_id")
        .await;
    assert_eq!(
        rows,
        json!([
            {"_delivery_id": "msg_2", "_webhook": "sw", "body": "{}"},
            {"_delivery_id": SW_ID, "_webhook": "sw", "body": SW_BODY},
        ])
    );

    // An unknown webhook answers exactly like a bad signature.
    let (status, unknown) = deliver(&s, "nope", &sw, SW_BODY).await;
    assert_eq!(status, 401);
    assert_eq!(unknown["error"]["code"], bad["error"]["code"]);
    assert_eq!(unknown["error"]["message"], bad["error"]["message"]);

    // GitHub: the documented vector (not JSON: kept as text), under the second secret; the
    // same body again is a duplicate (GitHub does not sign its delivery id).
    let gh = vec![("x-hub-signature-256", GH_SIG.to_string())];
    assert_eq!(deliver(&s, "gh", &gh, GH_BODY).await.0, 200);
    let (_, again) = deliver(
        &s,
        "gh",
        &[("x-github-delivery", "other".into()), gh[0].clone()],
        GH_BODY,
    )
    .await;
    assert_eq!(again["duplicate"], true, "{again}");
    let wrong = vec![("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))];
    assert_eq!(deliver(&s, "gh", &wrong, GH_BODY).await.0, 401);
    assert_eq!(s.count("bronze.gh_events").await, 1);

    // Stripe: the event id inside the signed body is the key.
    let event = r#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let now = SW_TS + 10;
    let (status, body) = deliver(
        &s,
        "stripe",
        &stripe("whsec_stripe_test", now, event),
        event,
    )
    .await;
    assert_eq!(
        (status, body["delivery_id"].clone()),
        (200, json!("evt_1")),
        "{body}"
    );
    let (_, body) = deliver(
        &s,
        "stripe",
        &stripe("whsec_stripe_test", now + 1, event),
        event,
    )
    .await;
    assert_eq!(
        body["duplicate"], true,
        "re-signed later, still the same event: {body}"
    );
    let (status, _) = deliver(
        &s,
        "stripe",
        &stripe("whsec_stripe_test", now - 600, event),
        event,
    )
    .await;
    assert_eq!(status, 400);

    // Generic HMAC in a named header.
    let body = r#"{"a":1}"#;
    let sig = hex_hmac(b"k", &[body.as_bytes()]);
    assert_eq!(
        deliver(&s, "generic", &[("x-signature", sig.clone())], body)
            .await
            .0,
        200
    );
    assert_eq!(
        deliver(
            &s,
            "generic",
            &[("x-signature", sig[1..].to_string())],
            body
        )
        .await
        .0,
        401
    );

    // Every outcome counted; the unknown name under an empty label, never its own.
    let text = s.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "strata_webhook_deliveries_total{webhook=\"sw\",outcome=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "strata_webhook_deliveries_total{webhook=\"sw\",outcome=\"duplicate\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "strata_webhook_deliveries_total{webhook=\"sw\",outcome=\"stale\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "strata_webhook_deliveries_total{webhook=\"\",outcome=\"bad_signature\"}"
        ),
        1.0
    );
    assert!(!text.contains("nope"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_admin_only_checked_up_front_and_never_hold_secret_values() {
    let (s, _secrets) = server().await;
    let admin = s.admin.clone();
    let analyst = s.token("ann", &["analyst"]);
    let (status, _) = s
        .put_json(
            &analyst,
            "/api/v1/webhooks/gh",
            spec("bronze.gh", "github", &["gh"]),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(s.get(&analyst, "/api/v1/webhooks").await.0, 403);
    for (bad, needle) in [
        (
            spec("bronze.gh", "github", &["missing"]),
            "[[connectors.secrets]]: sw",
        ),
        (spec("bronze.gh", "github", &[]), "at least one"),
        (
            json!({"table": "bronze.gh", "scheme": "github", "secrets": ["gh"], "run_as": "nobody"}),
            "not a service principal",
        ),
        (
            json!({"table": "bronze.gh", "scheme": "hmac", "secrets": ["plain"], "run_as": "ingest"}),
            "signature_header",
        ),
        (
            json!({"table": "silver.gh", "scheme": "github", "secrets": ["gh"], "run_as": "ingest"}),
            "has no INSERT on silver.gh",
        ),
        (
            json!({"table": "bronze.gh", "scheme": "github", "secrets": ["gh"], "run_as": "ingest", "max_body_bytes": 1 << 30}),
            "max_body_bytes",
        ),
        (
            json!({"table": "bronze.gh", "scheme": "github", "secrets": ["gh"], "run_as": "ingest", "columns": [{"name": "body", "type": "STRING"}]}),
            "delivery columns",
        ),
        (
            json!({"table": "bronze.gh", "scheme": "nope", "secrets": ["gh"], "run_as": "ingest"}),
            "standard_webhooks",
        ),
    ] {
        let (status, body) = s.put_json(&admin, "/api/v1/webhooks/gh", bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(message(&body).contains(needle), "{needle}: {body}");
    }
    let (status, _) = s
        .put_json(
            &admin,
            "/api/v1/webhooks/bad%20name",
            spec("bronze.gh", "github", &["gh"]),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(s.get(&admin, "/api/v1/webhooks/gh").await.0, 404);

    define(&s, "gh", spec("bronze.gh", "github", &["gh"])).await;
    let (status, listed) = s.get(&admin, "/api/v1/webhooks").await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(text.contains("\"secrets\":[\"gh\"]"), "{text}");
    assert!(!text.contains(GH_SECRET), "no secret value: {text}");
    // The table was created with the delivery columns, its description naming the webhook.
    let (_, described) = s.get(&admin, "/api/v1/tables/bronze/gh").await;
    assert!(
        described.to_string().contains("_delivery_id"),
        "{described}"
    );

    // A new version replaces the old; deleting stops deliveries at once, the table stays.
    let stored = define(&s, "gh", spec("bronze.gh", "github", &["gh_new", "gh"])).await;
    assert_eq!(stored["version"], 1);
    let gh = vec![("x-hub-signature-256", GH_SIG.to_string())];
    assert_eq!(deliver(&s, "gh", &gh, GH_BODY).await.0, 200);
    let (status, _) = s
        .send_json(
            reqwest::Method::DELETE,
            &admin,
            "/api/v1/webhooks/gh",
            Value::Null,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(deliver(&s, "gh", &gh, "{}").await.0, 401);
    assert_eq!(s.get(&admin, "/api/v1/webhooks/gh").await.0, 404);
    assert_eq!(s.count("bronze.gh").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_rate_limited_and_failed_deliveries_write_nothing() {
    let (s, _secrets) = server().await;
    let mut limited = spec("bronze.events", "hmac", &["plain"]);
    limited["signature_header"] = json!("x-signature");
    limited["max_body_bytes"] = json!(64);
    limited["rate_limit"] = json!({"per_second": 1, "burst": 2});
    define(&s, "limited", limited).await;
    let signed = |body: &str| vec![("x-signature", hex_hmac(b"k", &[body.as_bytes()]))];

    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(100));
    let (status, body) = deliver(&s, "limited", &signed(&big), &big).await;
    assert_eq!(status, 413, "{body}");
    // Over the route's own limit too (1 MiB by default): refused before anything is read.
    let huge = "x".repeat(2 << 20);
    assert_eq!(deliver(&s, "limited", &[], &huge).await.0, 413);

    // Two at once (the burst), the third within the second: 429. A bad signature does not
    // count against the webhook's limit.
    assert_eq!(
        deliver(&s, "limited", &[("x-signature", "00".into())], "{}")
            .await
            .0,
        401
    );
    // Sent at once: one after another, each waits for its commit, and on a loaded machine
    // the third could come after the limiter's second is over.
    let bodies: Vec<String> = (0..3).map(|i| format!("{{\"i\":{i}}}")).collect();
    let answers = futures::future::join_all(
        bodies
            .iter()
            .map(|body| async { deliver(&s, "limited", &signed(body), body).await.0 }),
    )
    .await;
    let mut statuses = answers;
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 429]);
    assert_eq!(s.count("bronze.events").await, 2);

    // A commit that fails (the writer's row filter refuses the rows): 503, nothing written;
    // once fixed, the sender's retry lands.
    let (status, body) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/tables/bronze/events/policies",
            json!({"row_filters": [{"roles": ["ingest"], "predicate": "_webhook = 'another'"},
                                   {"roles": ["admin"], "predicate": "true"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let retry = "{\"i\":9}";
    let (status, body) = deliver(&s, "limited", &signed(retry), retry).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(s.count("bronze.events").await, 2);
    let (status, _) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/tables/bronze/events/policies",
            json!({"row_filters": []}),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = deliver(&s, "limited", &signed(retry), retry).await;
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(false)),
        "{body}"
    );
    assert_eq!(s.count("bronze.events").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_share_commits_and_typed_columns_come_from_the_body() {
    let (s, _secrets) = server().await;
    let mut typed = spec("bronze.orders_hook", "hmac", &["plain"]);
    typed["signature_header"] = json!("x-signature");
    // A wide window: on a loaded CI box 60 debug-build deliveries can take over a second to
    // arrive; what is checked is that they share commits, not how fast they come.
    typed["commit_window_ms"] = json!(1000);
    typed["headers"] = json!(["x-event"]);
    typed["columns"] = json!([{"name": "order_id", "type": "BIGINT", "nullable": false},
                              {"name": "amount", "type": "DOUBLE"}]);
    define(&s, "orders", typed).await;
    let signed = |body: &str| {
        vec![
            ("x-signature", hex_hmac(b"k", &[body.as_bytes()])),
            ("x-event", "order.created".to_string()),
        ]
    };
    let mut sent = Vec::new();
    for i in 0..60 {
        let body = format!("{{\"order_id\":{i},\"amount\":{i}.5,\"note\":\"kept in body\"}}");
        let headers = signed(&body);
        let s = &s;
        sent.push(async move { deliver(s, "orders", &headers, &body).await });
    }
    let answers = futures::future::join_all(sent).await;
    assert!(answers.iter().all(|(st, _)| *st == 200), "{answers:?}");
    let versions: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, b)| b["version"].to_string())
        .collect();
    assert!(
        versions.len() <= 6,
        "60 deliveries in at most 6 commits: {versions:?}"
    );
    let rows = s
        .sql_ok("SELECT count(*) AS n, sum(order_id) AS ids, sum(amount) AS amount, min(_headers) AS h FROM bronze.orders_hook")
        .await;
    assert_eq!(
        rows,
        json!([{"n": 60, "ids": 1770, "amount": 1800.0, "h": "{\"x-event\":\"order.created\"}"}])
    );

    // A body that does not fit the columns is refused alone, with the reason.
    for bad in [
        r#"{"order_id":"seven"}"#,
        r#"{"amount":1.0}"#,
        "[1]",
        "not json",
    ] {
        let (status, body) = deliver(&s, "orders", &signed(bad), bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(s.count("bronze.orders_hook").await, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_are_duplicates_after_a_restart_and_on_another_replica() {
    let (s, _secrets) = server().await;
    let mut generic = spec("bronze.hooks", "hmac", &["plain"]);
    generic["signature_header"] = json!("x-signature");
    define(&s, "g", generic).await;
    let signed = |body: &str| vec![("x-signature", hex_hmac(b"k", &[body.as_bytes()]))];
    assert_eq!(
        deliver(&s, "g", &signed("{\"n\":1}"), "{\"n\":1}").await.1["duplicate"],
        false
    );

    // Another replica on the same warehouse: its first group reads the accepted ids.
    let r = s.replica().await;
    let (_, answer) = deliver(&r, "g", &signed("{\"n\":1}"), "{\"n\":1}").await;
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(
        deliver(&r, "g", &signed("{\"n\":2}"), "{\"n\":2}").await.1["duplicate"],
        false
    );
    // The first replica reads the other's commit before its next group.
    let (_, answer) = deliver(&s, "g", &signed("{\"n\":2}"), "{\"n\":2}").await;
    assert_eq!(answer["duplicate"], true, "{answer}");
    drop(r);

    let s = s.restart().await;
    assert_eq!(
        deliver(&s, "g", &signed("{\"n\":1}"), "{\"n\":1}").await.1["duplicate"],
        true
    );
    assert_eq!(s.count("bronze.hooks").await, 2);
}

/// SIGKILL between receipt and commit: the sender sees no 2xx, and its retry after the
/// restart lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_answers_nothing_and_the_retry_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "k").unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[[pipelines.principals]]\nname = \"ingest\"\nroles = [\"ingest\"]\n\n\
             [[access.grants]]\nrole = \"ingest\"\nprivilege = \"INSERT\"\non = \"bronze\"\n\n\
             [[connectors.secrets]]\nname = \"plain\"\nfile = \"{}\"\n",
            dir.path().join("secret").display()
        ),
    )
    .unwrap();
    let env = vec![("STRATA_CONFIG".to_string(), config.display().to_string())];
    let client = reqwest::Client::new();
    let body = r#"{"n":1}"#;
    let sig = hex_hmac(b"k", &[body.as_bytes()]);
    let post = |http: String| {
        client
            .post(format!("{http}/api/v1/ingest/webhooks/g"))
            .header("x-signature", sig.clone())
            .body(body)
            .send()
    };

    let mut p = StrataProcess::spawn(dir.path(), &armed(&env, "webhook.before_commit")).await;
    let mut generic = spec("bronze.hooks", "hmac", &["plain"]);
    generic["signature_header"] = json!("x-signature");
    let (status, answer) = crate::harness::send(
        &client,
        &p.token,
        reqwest::Method::PUT,
        &format!("{}/api/v1/webhooks/g", p.http),
        generic,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let crashed = post(p.http.clone()).await;
    assert!(
        crashed.is_err(),
        "no answer from a server that died: {crashed:?}"
    );
    let _ = p.child.wait();

    let p = StrataProcess::spawn(dir.path(), &env).await;
    let r = post(p.http.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], false);
    let (_, rows) = crate::harness::send(
        &client,
        &p.token,
        reqwest::Method::POST,
        &format!("{}/api/v1/query", p.http),
        json!({"sql": "SELECT count(*) AS n FROM bronze.hooks"}),
    )
    .await;
    assert_eq!(rows, json!([{"n": 1}]));
}
