//! Pull connectors against the real server, reading from a real HTTP API the test starts on
//! loopback (it counts and timestamps every request it gets).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strata::config::{Config, GrantConfig, SecretRef, ServicePrincipalConfig};

use crate::harness::{Backend, StrataProcess, TestServer, armed};

/// One request the test API received.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    path: String,
    query: BTreeMap<String, String>,
    auth: Option<String>,
}

/// The test API's state: what it received and how it misbehaves.
#[derive(Debug, Default)]
struct Api {
    hits: Mutex<Vec<Hit>>,
    /// `/pages`: this page answers 500 while set.
    fail_page: Mutex<Option<u64>>,
    /// `/limited`: 429s still to give.
    throttle: Mutex<u32>,
    /// `/secure`: the token it accepts.
    token: Mutex<String>,
    tokens_issued: Mutex<u32>,
}

type Shared = Arc<Api>;

fn record(api: &Api, path: &str, q: &BTreeMap<String, String>, h: &http::HeaderMap) {
    api.hits.lock().unwrap().push(Hit {
        at: Instant::now(),
        path: path.to_string(),
        query: q.clone(),
        auth: h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
}

/// Twelve items over three cursor pages, `updated_at` rising with the id; `updated_since`
/// and `updated_before` filter them.
async fn items(
    State(api): State<Shared>,
    h: http::HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    record(&api, "/items", &q, &h);
    let since = q.get("updated_since").cloned().unwrap_or_default();
    let before = q.get("updated_before").cloned();
    let all: Vec<Value> = (1..=12)
        .map(|i| json!({"id": i, "name": format!("item {i}"), "updated_at": format!("2026-01-{i:02}T00:00:00Z")}))
        .filter(|r| r["updated_at"].as_str().unwrap() >= since.as_str())
        .filter(|r| before.as_deref().is_none_or(|b| r["updated_at"].as_str().unwrap() < b))
        .collect();
    let start: usize = q.get("cursor").map_or(0, |c| c.parse().unwrap());
    let page: Vec<Value> = all.iter().skip(start).take(4).cloned().collect();
    let next = (start + 4 < all.len()).then(|| (start + 4).to_string());
    axum::Json(json!({"data": page, "next": next})).into_response()
}

/// 200 pages of five records (`?page=1..`); `fail_page` answers 500.
async fn pages(
    State(api): State<Shared>,
    h: http::HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    record(&api, "/pages", &q, &h);
    let n: u64 = q.get("page").map_or(1, |p| p.parse().unwrap());
    if *api.fail_page.lock().unwrap() == Some(n) {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let rows: Vec<Value> = if n <= 200 {
        (0..5)
            .map(|i| json!({"id": n * 10 + i, "page": n}))
            .collect()
    } else {
        Vec::new()
    };
    axum::Json(json!({"rows": rows})).into_response()
}

/// 429 with `Retry-After: 2` while `throttle` lasts, then one page of records.
async fn limited(
    State(api): State<Shared>,
    h: http::HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    record(&api, "/limited", &q, &h);
    let mut t = api.throttle.lock().unwrap();
    if *t > 0 {
        *t -= 1;
        return (
            http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "2")],
            "slow down",
        )
            .into_response();
    }
    axum::Json(json!([{"id": 1}, {"id": 2}])).into_response()
}

/// A page with one malformed record (`id` not a number).
async fn mixed(State(api): State<Shared>, h: http::HeaderMap) -> Response {
    record(&api, "/mixed", &BTreeMap::new(), &h);
    axum::Json(json!([{"id": 1}, {"id": "one"}, {"id": 3}])).into_response()
}

async fn missing(State(api): State<Shared>, h: http::HeaderMap) -> Response {
    record(&api, "/missing", &BTreeMap::new(), &h);
    (http::StatusCode::NOT_FOUND, "no such thing").into_response()
}

/// OAuth2 client credentials: `client:s3cret` by HTTP Basic.
async fn token(State(api): State<Shared>, h: http::HeaderMap, body: String) -> Response {
    record(&api, "/token", &BTreeMap::new(), &h);
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "client:s3cret")
    );
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str())
        || !body.contains("grant_type=client_credentials")
    {
        return (http::StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    let mut issued = api.tokens_issued.lock().unwrap();
    *issued += 1;
    let t = format!("tok{issued}");
    *api.token.lock().unwrap() = t.clone();
    axum::Json(json!({"access_token": t, "token_type": "bearer", "expires_in": 3600}))
        .into_response()
}

async fn secure(State(api): State<Shared>, h: http::HeaderMap) -> Response {
    record(&api, "/secure", &BTreeMap::new(), &h);
    let expected = format!("Bearer {}", api.token.lock().unwrap());
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (http::StatusCode::UNAUTHORIZED, "expired").into_response();
    }
    axum::Json(json!({"data": [{"id": 7}]})).into_response()
}

/// One record and a next-page URL (`?to=`; none without it).
async fn hop(
    State(api): State<Shared>,
    h: http::HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    record(&api, "/hop", &q, &h);
    axum::Json(json!({"data": [{"id": 1}], "next": q.get("to")})).into_response()
}

/// Redirects off the allow-list (to a loopback alias that is not listed).
async fn elsewhere(State(api): State<Shared>, h: http::HeaderMap) -> Response {
    record(&api, "/elsewhere", &BTreeMap::new(), &h);
    let port = h
        .get("host")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.rsplit(':').next())
        .unwrap_or("80")
        .to_string();
    (
        http::StatusCode::FOUND,
        [("location", format!("http://127.0.0.2:{port}/items"))],
    )
        .into_response()
}

/// Starts the test API on loopback; its base URL and state.
async fn api() -> (String, Shared) {
    let state = Shared::default();
    let app = axum::Router::new()
        .route("/items", axum::routing::get(items))
        .route("/pages", axum::routing::get(pages))
        .route("/limited", axum::routing::get(limited))
        .route("/mixed", axum::routing::get(mixed))
        .route("/missing", axum::routing::get(missing))
        .route("/token", axum::routing::post(token))
        .route("/secure", axum::routing::get(secure))
        .route("/elsewhere", axum::routing::get(elsewhere))
        .route("/hop", axum::routing::get(hop))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state)
}

fn hits(api: &Api, path: &str) -> Vec<Hit> {
    api.hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.path == path)
        .cloned()
        .collect()
}

/// The writer `ingest` (INSERT and MODIFY on bronze), the API's client secret, and
/// loopback allowed.
fn with_ingest(cfg: &mut Config, dir: &Path) {
    let path = dir.join("oauth");
    std::fs::write(&path, "s3cret\n").unwrap();
    cfg.connectors.secrets.push(SecretRef {
        name: "oauth".into(),
        env: None,
        file: Some(path),
    });
    cfg.connectors.allowed_hosts = vec!["127.0.0.1".into()];
    cfg.pipelines.principals = vec![ServicePrincipalConfig {
        name: "ingest".into(),
        roles: vec!["ingest".into()],
        claims: BTreeMap::new(),
    }];
    for privilege in ["INSERT", "MODIFY"] {
        cfg.access.grants.push(GrantConfig {
            role: "ingest".into(),
            privilege: privilege.into(),
            on: "bronze".into(),
        });
    }
}

async fn server() -> (TestServer, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let s =
        TestServer::start_configured(Backend::Local, |cfg| with_ingest(cfg, secrets.path())).await;
    (s, secrets)
}

/// `PUT /api/v1/connectors/{name}` with a TOML body.
async fn deploy_at(http: &str, token: &str, name: &str, toml: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(format!("{http}/api/v1/connectors/{name}"))
        .bearer_auth(token)
        .header("content-type", "application/toml")
        .body(toml.to_string())
        .send()
        .await
        .unwrap();
    crate::harness::status_json(r).await
}

async fn deploy(s: &TestServer, name: &str, toml: &str) {
    let (status, body) = deploy_at(&s.url(""), &s.admin.clone(), name, toml).await;
    assert_eq!(status, 200, "{body}");
}

async fn run_at(http: &str, token: &str, name: &str) -> (u16, Value) {
    crate::harness::send(
        &reqwest::Client::new(),
        token,
        reqwest::Method::POST,
        &format!("{http}/api/v1/connectors/{name}/runs?wait=true"),
        json!({}),
    )
    .await
}

async fn run(s: &TestServer, name: &str) -> Value {
    let (status, report) = run_at(&s.url(""), &s.admin.clone(), name).await;
    assert_eq!(status, 200, "{report}");
    report
}

fn items_connector(base: &str) -> String {
    format!(
        r#"
table = "bronze.items"
run_as = "ingest"
mode = "append_dedup"
primary_key = ["id"]

[request]
url = "{base}/items"

[pagination]
type = "cursor"
path = "$.next"
param = "cursor"

[records]
path = "$.data[*]"
fields = [
  {{ name = "id", type = "bigint", nullable = false }},
  {{ name = "name" }},
  {{ name = "updated_at", type = "timestamp" }},
]

[incremental]
field = "updated_at"
param = "updated_since"
until_param = "updated_before"
lookback = 172800
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_land_once_and_the_next_sync_asks_from_the_cursor_minus_the_lookback() {
    let (base, api) = api().await;
    let (s, _secrets) = server().await;
    // Deployed from a file with the CLI; a broken definition exits non-zero with the reason.
    let dir = tempfile::tempdir().unwrap();
    let cli = |text: &str| {
        let file = dir.path().join("items.toml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["connectors", "deploy"])
            .arg(&file)
            .args(["--url", &s.url("")])
            .env("STRATA_TOKEN", s.admin.clone())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = cli(&items_connector(&base).replace("lookback = 172800", "lookback = \"2d\""));
    assert!(!ok && err.contains("lookback"), "{err}");
    let (ok, err) = cli(&items_connector(&base));
    assert!(ok, "{err}");

    let first = run(&s, "items").await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(
        (first["pages"].as_u64(), first["records"].as_u64()),
        (Some(3), Some(12))
    );
    assert_eq!(
        first["cursor"], "2026-01-12T00:00:00Z",
        "the max updated_at"
    );
    let asked = hits(&api, "/items");
    assert_eq!(asked.len(), 3);
    assert!(
        !asked[0].query.contains_key("updated_since"),
        "no cursor yet: {asked:?}"
    );
    assert_eq!(asked[1].query.get("cursor").map(String::as_str), Some("4"));
    assert_eq!(s.count("bronze.items").await, 12);
    let distinct = s
        .sql_ok("SELECT count(DISTINCT id) AS n, max(updated_at) AS m FROM bronze.items")
        .await;
    assert_eq!(distinct[0]["n"], 12);

    // Two days of lookback: items 10..12 again; append_dedup keeps one row per id.
    let second = run(&s, "items").await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(second["since"], "2026-01-10T00:00:00Z");
    let last = hits(&api, "/items").pop().unwrap();
    assert_eq!(
        last.query.get("updated_since").map(String::as_str),
        Some("2026-01-10T00:00:00Z")
    );
    assert_eq!(second["records"], 3);
    assert_eq!(s.count("bronze.items").await, 12, "no duplicates");

    let (status, view) = s.get(&s.admin.clone(), "/api/v1/connectors/items").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "idle");
    assert_eq!(view["checkpoint"]["cursor"], "2026-01-12T00:00:00Z");
    assert!(view["checkpoint"].get("resume").is_none(), "{view}");
    assert_eq!(view["status"]["last_run"]["records"], 3);
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains("strata_connector_records_total{connector=\"items\"} 15"),
        "{metrics}"
    );
    // The history shows the checkpoint in the commit that holds its rows.
    let history = s.sql_ok("DESCRIBE HISTORY bronze.items").await;
    assert!(history.to_string().contains("CONNECTOR SYNC"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_as_told_without_spending_an_attempt_and_the_rate_is_kept() {
    let (base, api) = api().await;
    let (s, _secrets) = server().await;
    *api.throttle.lock().unwrap() = 1;
    deploy(
        &s,
        "limited",
        &format!(
            r#"
table = "bronze.limited"
run_as = "ingest"
[request]
url = "{base}/limited"
[records]
fields = [{{ name = "id", type = "bigint" }}]
[retry]
max_attempts = 1
"#
        ),
    )
    .await;
    let report = run(&s, "limited").await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["retries"], 0, "a 429 is not an attempt");
    let h = hits(&api, "/limited");
    assert_eq!(h.len(), 2);
    let waited = h[1].at - h[0].at;
    assert!(waited >= Duration::from_secs(2), "waited {waited:?}");
    assert!(
        report["rate_limited_secs"].as_f64().unwrap() >= 2.0,
        "{report}"
    );
    assert_eq!(s.count("bronze.limited").await, 2);

    // 5 requests per second over 15 pages: no second at the API holds more than 5.
    deploy(
        &s,
        "paced",
        &format!(
            r#"
table = "bronze.paced"
run_as = "ingest"
max_pages = 15
[request]
url = "{base}/pages"
[pagination]
type = "page"
[records]
path = "$.rows[*]"
fields = [{{ name = "id", type = "bigint" }}]
[rate_limit]
per_second = 5
"#
        ),
    )
    .await;
    let report = run(&s, "paced").await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["more"], true, "stopped at max_pages");
    // Arrival times carry the sender's jitter (the first request also opens the
    // connection): a window a little under a second, from the second request on, tells a
    // limiter that paces at 5/s from one that does not.
    let times: Vec<Instant> = hits(&api, "/pages").iter().map(|h| h.at).collect();
    assert_eq!(times.len(), 15);
    let overall = (times[14] - times[1]).as_secs_f64();
    assert!(overall >= 13.0 / 5.0 * 0.95, "13 intervals in {overall} s");
    for (i, t) in times.iter().enumerate().skip(1) {
        let within = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_millis(850))
            .count();
        assert!(
            within <= 5,
            "{within} requests within a second from request {i}"
        );
    }
}

fn pages_connector(base: &str) -> String {
    format!(
        r#"
table = "bronze.pages"
run_as = "ingest"
checkpoint_pages = 50
[request]
url = "{base}/pages"
[pagination]
type = "page"
size = 5
[records]
path = "$.rows[*]"
fields = [{{ name = "id", type = "bigint" }}, {{ name = "page", type = "bigint" }}]
[retry]
max_attempts = 2
base_ms = 10
max_ms = 20
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_on_page_120_keeps_100_pages_and_the_rerun_resumes_at_page_101() {
    let (base, api) = api().await;
    let (s, _secrets) = server().await;
    *api.fail_page.lock().unwrap() = Some(120);
    deploy(&s, "pages", &pages_connector(&base)).await;

    let failed = run(&s, "pages").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("HTTP 500"),
        "{failed}"
    );
    assert_eq!(failed["checkpoints"], 2);
    assert_eq!(s.count("bronze.pages").await, 500, "100 pages of 5");
    let (_, view) = s.get(&s.admin.clone(), "/api/v1/connectors/pages").await;
    assert_eq!(view["state"], "failing");
    assert_eq!(view["checkpoint"]["resume"]["next"]["value"], 101, "{view}");

    *api.fail_page.lock().unwrap() = None;
    api.hits.lock().unwrap().clear();
    let resumed = run(&s, "pages").await;
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
    assert_eq!(resumed["resumed"], true);
    let asked: Vec<u64> = hits(&api, "/pages")
        .iter()
        .map(|h| h.query["page"].parse().unwrap())
        .collect();
    assert_eq!(
        asked.first(),
        Some(&101),
        "resumed where the checkpoint said"
    );
    assert_eq!(asked.len(), 101, "pages 101..=201 (the empty one ends it)");
    assert_eq!(s.count("bronze.pages").await, 1000);
    let distinct = s
        .sql_ok("SELECT count(DISTINCT id) AS n FROM bronze.pages")
        .await;
    assert_eq!(distinct[0]["n"], 1000, "each record once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_dead_letters_and_a_404_fails_the_run_leaving_the_cursor() {
    let (base, _api) = api().await;
    let (s, _secrets) = server().await;
    deploy(
        &s,
        "mixed",
        &format!(
            r#"
table = "bronze.mixed"
run_as = "ingest"
[request]
url = "{base}/mixed"
[records]
raw_column = "raw"
fields = [{{ name = "id", type = "bigint" }}]
"#
        ),
    )
    .await;
    let report = run(&s, "mixed").await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        (report["rows"].as_u64(), report["dead_letters"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(s.count("bronze.mixed").await, 2);
    let dead = s
        .sql_ok("SELECT record, error FROM bronze.mixed__dead_letter")
        .await;
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert!(
        dead[0]["record"].as_str().unwrap().contains("\"one\""),
        "{dead}"
    );
    assert!(!dead[0]["error"].as_str().unwrap().is_empty());

    // The items connector has a cursor; pointing it at a 404 fails and leaves it.
    deploy(&s, "items", &items_connector(&base)).await;
    let ok = run(&s, "items").await;
    assert_eq!(ok["cursor"], "2026-01-12T00:00:00Z");
    deploy(
        &s,
        "items",
        &items_connector(&base).replace("/items\"", "/missing\""),
    )
    .await;
    let failed = run(&s, "items").await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("HTTP 404"),
        "{failed}"
    );
    let (_, view) = s.get(&s.admin.clone(), "/api/v1/connectors/items").await;
    assert_eq!(
        view["checkpoint"]["cursor"], "2026-01-12T00:00:00Z",
        "unchanged"
    );

    // Configured to dead-letter failed requests, the same 404 becomes a dead letter.
    let toml = items_connector(&base)
        .replace("/items\"", "/missing\"")
        .replace(
            "primary_key = [\"id\"]",
            "primary_key = [\"id\"]\ndead_letter_failed_requests = true\n[retry]\nmax_attempts = 1",
        );
    deploy(&s, "items", &toml).await;
    let lettered = run(&s, "items").await;
    assert_eq!(lettered["status"], "succeeded", "{lettered}");
    let dead = s
        .sql_ok("SELECT error FROM bronze.items__dead_letter")
        .await;
    assert!(
        dead[0]["error"].as_str().unwrap().contains("HTTP 404"),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_refresh_hosts_off_the_list_are_refused_and_the_breaker_pauses() {
    let (base, api) = api().await;
    let (s, _secrets) = server().await;
    let secure = format!(
        r#"
table = "bronze.secure"
run_as = "ingest"
pause_after_failures = 2
[request]
url = "{base}/secure"
[auth]
type = "oauth2"
token_url = "{base}/token"
client_id = "client"
client_secret = "oauth"
[records]
path = "$.data[*]"
fields = [{{ name = "id", type = "bigint" }}]
"#
    );
    deploy(&s, "secure", &secure).await;
    assert_eq!(run(&s, "secure").await["status"], "succeeded");
    // The API forgets the token: the next run gets a 401, a new token, and succeeds.
    *api.token.lock().unwrap() = "revoked".into();
    assert_eq!(run(&s, "secure").await["status"], "succeeded");
    assert_eq!(*api.tokens_issued.lock().unwrap(), 2);
    assert!(
        hits(&api, "/secure")
            .iter()
            .all(|h| h.auth.as_deref() != Some("Bearer s3cret"))
    );

    // Not listed: refused at deploy, and at a redirect during a run.
    let (status, body) = deploy_at(
        &s.url(""),
        &s.admin.clone(),
        "off",
        &secure.replace(&base, "http://127.0.0.2:9"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("allowed_hosts"), "{body}");
    deploy(
        &s,
        "redirected",
        &format!(
            r#"
table = "bronze.redirected"
run_as = "ingest"
pause_after_failures = 2
[request]
url = "{base}/elsewhere"
[records]
fields = [{{ name = "id", type = "bigint" }}]
"#
        ),
    )
    .await;
    let failed = run(&s, "redirected").await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("allowed_hosts"),
        "{failed}"
    );
    assert!(
        hits(&api, "/items").is_empty(),
        "the redirect was not followed"
    );

    // Two failures in a row: paused; a run is refused until resumed.
    run(&s, "redirected").await;
    let (status, body) = run_at(&s.url(""), &s.admin.clone(), "redirected").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("resume"), "{body}");
    let (status, _) = s
        .post_json(
            &s.admin.clone(),
            "/api/v1/connectors/redirected/resume",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = run_at(&s.url(""), &s.admin.clone(), "redirected").await;
    assert_eq!(status, 200);

    // A next-page link to another (allowed) origin gets no credentials.
    let (other, other_api) = self::api().await;
    deploy(
        &s,
        "hopping",
        &format!(
            r#"
table = "bronze.hopping"
run_as = "ingest"
[request]
url = "{base}/hop?to={other}/hop"
[auth]
type = "bearer"
secret = "oauth"
[pagination]
type = "cursor"
path = "$.next"
url = true
[records]
path = "$.data[*]"
fields = [{{ name = "id", type = "bigint" }}]
"#
        ),
    )
    .await;
    assert_eq!(run(&s, "hopping").await["pages"], 2);
    assert_eq!(hits(&api, "/hop")[0].auth.as_deref(), Some("Bearer s3cret"));
    let there = hits(&other_api, "/hop");
    assert_eq!(there.len(), 1);
    assert_eq!(
        there[0].auth, None,
        "credentials stay on the definition's origin"
    );

    // Admins only.
    let analyst = s.token("ana", &["analyst"]);
    let (status, _) = s.get(&analyst, "/api/v1/connectors/secure").await;
    assert_eq!(status, 403);
}

/// SIGKILL right after a checkpoint's commit, then again before one: the re-runs after
/// each restart fetch from the last checkpoint, and every record is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sync_loses_nothing_and_duplicates_nothing() {
    let (base, _api) = api().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.toml");
    std::fs::write(
        &config,
        "[connectors]\nallowed_hosts = [\"127.0.0.1\"]\n\n\
         [[pipelines.principals]]\nname = \"ingest\"\nroles = [\"ingest\"]\n\n\
         [[access.grants]]\nrole = \"ingest\"\nprivilege = \"INSERT\"\non = \"bronze\"\n",
    )
    .unwrap();
    let env = vec![("STRATA_CONFIG".to_string(), config.display().to_string())];
    let toml = pages_connector(&base).replace("checkpoint_pages = 50", "checkpoint_pages = 30");
    for failpoint in [
        "connector.after_checkpoint@2",
        "connector.before_checkpoint@3",
    ] {
        let mut p = StrataProcess::spawn(dir.path(), &armed(&env, failpoint)).await;
        let (status, body) = deploy_at(&p.http, &p.token, "pages", &toml).await;
        assert_eq!(status, 200, "{body}");
        let died = reqwest::Client::new()
            .post(format!("{}/api/v1/connectors/pages/runs?wait=true", p.http))
            .bearer_auth(&p.token)
            .send()
            .await;
        assert!(
            died.is_err(),
            "no answer from a server that died ({failpoint}): {died:?}"
        );
        let _ = p.child.wait();
    }
    let p = StrataProcess::spawn(dir.path(), &env).await;
    let (status, report) = run_at(&p.http, &p.token, "pages").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["resumed"], true);
    let (status, rows) = crate::harness::send(
        &reqwest::Client::new(),
        &p.token,
        reqwest::Method::POST,
        &format!("{}/api/v1/query", p.http),
        json!({"sql": "SELECT count(*) AS n, count(DISTINCT id) AS d FROM bronze.pages"}),
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        (rows[0]["n"].as_i64(), rows[0]["d"].as_i64()),
        (Some(1000), Some(1000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_window_has_its_own_checkpoints_and_never_moves_the_cursor() {
    let (base, api) = api().await;
    let (s, _secrets) = server().await;
    deploy(&s, "items", &items_connector(&base)).await;
    assert_eq!(run(&s, "items").await["cursor"], "2026-01-12T00:00:00Z");
    api.hits.lock().unwrap().clear();
    let client = reqwest::Client::new();
    let url = s.url("/api/v1/connectors/items/backfill?wait=true");
    let backfill = |window: Value| {
        crate::harness::send(&client, &s.admin, reqwest::Method::POST, &url, window)
    };
    let window = json!({"from": "2026-01-03T00:00:00Z", "to": "2026-01-06T00:00:00Z"});
    let (status, report) = backfill(window.clone()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["records"], 3, "items 3, 4 and 5");
    assert_eq!(report["window"], window);
    let asked = hits(&api, "/items");
    assert_eq!(asked[0].query["updated_since"], "2026-01-03T00:00:00Z");
    assert_eq!(asked[0].query["updated_before"], "2026-01-06T00:00:00Z");
    let (_, view) = s.get(&s.admin.clone(), "/api/v1/connectors/items").await;
    assert_eq!(
        view["checkpoint"]["cursor"], "2026-01-12T00:00:00Z",
        "the main cursor stays"
    );
    assert!(view["checkpoint"].get("window").is_none(), "{view}");
    assert_eq!(
        s.count("bronze.items").await,
        12,
        "append_dedup: one row per id"
    );

    // The same window again: done already. A connector that cannot bound a window: 400.
    let (status, body) = backfill(window).await;
    assert_eq!(status, 409, "{body}");
    deploy(
        &s,
        "items",
        &items_connector(&base).replace("until_param = \"updated_before\"\n", ""),
    )
    .await;
    let (status, body) = backfill(json!({"from": "a", "to": "b"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("until_param"), "{body}");
}

/// The scheduler's leader runs a connector with a schedule on its slots (a driven clock:
/// minutes pass without sleeping), and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedulers_leader_runs_a_scheduled_connector_on_its_slots() {
    let (base, api) = api().await;
    let at = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let clock = strata::clock::ManualClock::new(at("2026-03-01T00:00:30Z"));
    let secrets = tempfile::tempdir().unwrap();
    let s = TestServer::start_clocked(
        Backend::Local,
        |cfg| {
            with_ingest(cfg, secrets.path());
            cfg.scheduler.lease_ttl_secs = 5;
        },
        Arc::new(clock.clone()),
    )
    .await;
    let leads = async {
        for _ in 0..300 {
            let (_, v) = s.get(&s.admin.clone(), "/api/v1/scheduler").await;
            if v["is_leader"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server never led the scheduler");
    };
    leads.await;
    deploy(
        &s,
        "every_minute",
        &format!(
            r#"
table = "bronze.every_minute"
run_as = "ingest"
schedule = "* * * * *"
[request]
url = "{base}/limited"
[records]
fields = [{{ name = "id", type = "bigint" }}]
"#
        ),
    )
    .await;
    // The leader's passes (every second) see the schedule before its first slot.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(hits(&api, "/limited").is_empty(), "nothing before the slot");
    let runs_after = |n: usize| {
        let api = Arc::clone(&api);
        async move {
            for _ in 0..200 {
                if hits(&api, "/limited").len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no scheduled run #{n}: {:?}", hits(&api, "/limited"));
        }
    };
    // A slot that turns while the connector's previous run is still going is skipped (one run
    // per connector at a time), so each slot is driven only once the run before it has ended.
    let ended = |n: i64| {
        let s = &s;
        async move {
            for _ in 0..200 {
                let (_, view) = s
                    .get(&s.admin.clone(), "/api/v1/connectors/every_minute")
                    .await;
                let last = &view["status"]["last_run"];
                if last["status"] == "succeeded" && s.count("bronze.every_minute").await == 2 * n {
                    assert_eq!(last["trigger"], "schedule", "{view}");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("scheduled run #{n} never recorded its end");
        }
    };
    clock.set(at("2026-03-01T00:01:05Z"));
    runs_after(1).await;
    ended(1).await;
    clock.set(at("2026-03-01T00:02:05Z"));
    runs_after(2).await;
    ended(2).await;
    assert_eq!(hits(&api, "/limited").len(), 2, "one run per slot");
}
