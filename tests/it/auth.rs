//! Authentication on every route, default deny, and the privilege model.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::{TestServer, message};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn forge(secret: &[u8], alg: Algorithm, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_a_valid_token() {
    let s = TestServer::start().await;
    s.create_people("gold.people").await;
    let secret = std::fs::read(s.root.join("data/dev-secret")).unwrap();
    let secret = String::from_utf8(secret).unwrap();
    let secret = secret.trim().as_bytes();
    let bad_tokens = [
        ("garbage", "not.a.jwt".to_string()),
        (
            "expired",
            forge(
                secret,
                Algorithm::HS256,
                json!({"sub": "admin", "roles": ["admin"], "exp": now() - 3600}),
            ),
        ),
        (
            "not yet valid",
            forge(
                secret,
                Algorithm::HS256,
                json!({"sub": "admin", "roles": ["admin"], "exp": now() + 3600, "nbf": now() + 3000}),
            ),
        ),
        (
            "no exp",
            forge(
                secret,
                Algorithm::HS256,
                json!({"sub": "admin", "roles": ["admin"]}),
            ),
        ),
        (
            "no sub",
            forge(
                secret,
                Algorithm::HS256,
                json!({"roles": ["admin"], "exp": now() + 3600}),
            ),
        ),
        (
            "wrong key",
            forge(
                b"another-secret-of-sufficient-length!!",
                Algorithm::HS256,
                json!({"sub": "admin", "roles": ["admin"], "exp": now() + 3600}),
            ),
        ),
        (
            "alg not allowed",
            forge(
                secret,
                Algorithm::HS512,
                json!({"sub": "admin", "roles": ["admin"], "exp": now() + 3600}),
            ),
        ),
        (
            "exp wrongly typed",
            forge(
                secret,
                Algorithm::HS256,
                json!({"sub": "admin", "roles": ["admin"], "exp": "never"}),
            ),
        ),
    ];
    let alg_none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(
                json!({"sub": "admin", "roles": ["admin"], "exp": now() + 3600}).to_string()
            )
        )
    };
    let routes = [
        ("GET", "/api/v1/tables"),
        ("POST", "/api/v1/tables"),
        ("GET", "/api/v1/tables/gold/people"),
        ("PATCH", "/api/v1/tables/gold/people"),
        ("DELETE", "/api/v1/tables/gold/people"),
        ("POST", "/api/v1/tables/gold/people/rows"),
        ("GET", "/api/v1/tables/gold/people/history"),
        ("POST", "/api/v1/query"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/pipelines"),
        ("PUT", "/api/v1/pipelines/p"),
        ("POST", "/api/v1/pipelines/p/runs"),
        ("GET", "/api/v1/runs"),
        ("GET", "/api/v1/pipelines/p/models/m/quality"),
        ("POST", "/api/v1/pipelines/p/models/m/quarantine/replay"),
        ("PUT", "/api/v1/tables/gold/people/checks"),
        ("POST", "/api/v1/tables/gold/people/checks/run"),
        ("GET", "/api/v1/lineage/tables/gold/people"),
        ("GET", "/api/v1/lineage/columns/gold/people/id"),
        ("GET", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks/w"),
        ("PUT", "/api/v1/webhooks/w"),
        ("DELETE", "/api/v1/webhooks/w"),
        ("GET", "/api/v1/connectors"),
        ("GET", "/api/v1/connectors/c"),
        ("PUT", "/api/v1/connectors/c"),
        ("DELETE", "/api/v1/connectors/c"),
        ("POST", "/api/v1/connectors/c/runs"),
        ("POST", "/api/v1/connectors/c/backfill"),
        ("POST", "/api/v1/connectors/c/resume"),
    ];
    for (method, path) in routes {
        let method: reqwest::Method = method.parse().unwrap();
        let r = s
            .client
            .request(method.clone(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without token");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        for (what, token) in bad_tokens
            .iter()
            .map(|(w, t)| (*w, t.clone()))
            .chain([("alg none", alg_none.clone())])
        {
            let r = s
                .client
                .request(method.clone(), s.url(path))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {what} token");
        }
    }
    // The table is still there: none of those requests did anything.
    assert_eq!(s.version("gold.people").await, 0);
    for open in ["/healthz", "/readyz"] {
        let r = s.client.get(s.url(open)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    // The document is derived from the handlers: every route is in it, and every operation
    // but the open ones asks for the bearer token.
    let (status, doc) = s.get(&s.admin.clone(), "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let documented: &[(&str, &str)] = &[
        ("post", "/api/v1/query"),
        ("get", "/api/v1/tables"),
        ("post", "/api/v1/tables"),
        ("get", "/api/v1/tables/{layer}/{name}"),
        ("patch", "/api/v1/tables/{layer}/{name}"),
        ("delete", "/api/v1/tables/{layer}/{name}"),
        ("post", "/api/v1/tables/{layer}/{name}/rows"),
        ("get", "/api/v1/tables/{layer}/{name}/history"),
        ("post", "/api/v1/tables/{layer}/{name}/merge"),
        ("post", "/api/v1/tables/{layer}/{name}/scd2"),
        ("post", "/api/v1/tables/{layer}/{name}/optimize"),
        ("post", "/api/v1/tables/{layer}/{name}/vacuum"),
        ("post", "/api/v1/tables/{layer}/{name}/restore"),
        ("get", "/api/v1/tables/{layer}/{name}/policies"),
        ("put", "/api/v1/tables/{layer}/{name}/policies"),
        ("get", "/api/v1/grants"),
        ("put", "/api/v1/grants"),
        ("get", "/api/v1/pipelines"),
        ("get", "/api/v1/pipelines/{name}"),
        ("put", "/api/v1/pipelines/{name}"),
        ("delete", "/api/v1/pipelines/{name}"),
        ("post", "/api/v1/pipelines/{name}/runs"),
        ("post", "/api/v1/pipelines/{name}/pause"),
        ("post", "/api/v1/pipelines/{name}/backfill"),
        ("post", "/api/v1/runs/{id}/resume"),
        ("post", "/api/v1/pipelines/{name}/resume"),
        ("get", "/api/v1/runs"),
        ("get", "/api/v1/runs/{id}"),
        ("post", "/api/v1/runs/{id}/cancel"),
        ("get", "/api/v1/scheduler"),
        ("get", "/api/v1/pipelines/{name}/models/{model}/quality"),
        (
            "post",
            "/api/v1/pipelines/{name}/models/{model}/quarantine/replay",
        ),
        ("put", "/api/v1/tables/{layer}/{name}/checks"),
        ("get", "/api/v1/tables/{layer}/{name}/checks"),
        ("delete", "/api/v1/tables/{layer}/{name}/checks"),
        ("post", "/api/v1/tables/{layer}/{name}/checks/run"),
        ("get", "/api/v1/lineage/tables/{layer}/{name}"),
        ("get", "/api/v1/lineage/columns/{layer}/{name}/{column}"),
        ("get", "/api/v1/webhooks"),
        ("get", "/api/v1/webhooks/{name}"),
        ("put", "/api/v1/webhooks/{name}"),
        ("delete", "/api/v1/webhooks/{name}"),
        ("post", "/api/v1/ingest/webhooks/{name}"),
        ("get", "/api/v1/connectors"),
        ("get", "/api/v1/connectors/{name}"),
        ("put", "/api/v1/connectors/{name}"),
        ("delete", "/api/v1/connectors/{name}"),
        ("post", "/api/v1/connectors/{name}/runs"),
        ("post", "/api/v1/connectors/{name}/backfill"),
        ("post", "/api/v1/connectors/{name}/resume"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    ];
    for &(method, path) in documented {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
        // Open: health, and the webhook receiver (a signature instead of a token).
        let open = matches!(
            path,
            "/healthz" | "/readyz" | "/api/v1/ingest/webhooks/{name}"
        );
        assert_eq!(
            op["security"] == json!([{}]),
            open,
            "{method} {path}: security {}",
            op["security"]
        );
    }
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        operations,
        documented.len(),
        "undocumented extra operations?"
    );
    let r = s.client.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Request ids are echoed.
    let r = s
        .client
        .get(s.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_and_grants() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    s.create_people("gold.people").await;
    s.create_people("bronze.raw").await;
    s.create_people("silver.secret").await;
    let (status, _) = s
        .upload(
            &admin,
            "gold.people",
            "application/json",
            br#"[{"id":1}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 200);

    // A valid token with no grants sees nothing and can do nothing.
    let nobody = s.token("mallory", &[]);
    let (status, body) = s.get(&nobody, "/api/v1/tables").await;
    assert_eq!(status, 200);
    assert_eq!(body["tables"], json!([]));
    for (sql, status) in [
        ("SELECT * FROM gold.people", 404),
        ("SELECT * FROM gold.people VERSION AS OF 0", 404),
        ("INSERT INTO gold.people VALUES (2, 'x', 1)", 404),
        ("DROP TABLE gold.people", 404),
        ("CREATE TABLE gold.mine (a INT)", 403),
    ] {
        let (got, body) = s.sql(&nobody, sql).await;
        assert_eq!(got, status, "{sql}: {body}");
    }
    let body = s.sql(&nobody, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = 'strata' AND table_schema <> 'information_schema'").await.1;
    assert_eq!(body, json!([]));
    let (status, body) = s.get(&nobody, "/api/v1/tables/gold/people").await;
    assert_eq!(status, 404);
    assert!(message(&body).contains("not found"));

    // An analyst reads gold only.
    let analyst = s.token("ann", &["analyst"]);
    let (status, body) = s
        .sql(&analyst, "SELECT count(*) AS n FROM gold.people")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["n"], 1);
    let (status, _) = s.sql(&analyst, "SELECT * FROM silver.secret").await;
    assert_eq!(status, 404);
    let (status, _) = s
        .sql(
            &analyst,
            "SELECT * FROM gold.people WHERE id IN (SELECT id FROM silver.secret)",
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = s
        .sql(&analyst, "INSERT INTO gold.people VALUES (2, 'x', 1)")
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = s
        .upload(
            &analyst,
            "gold.people",
            "application/json",
            br#"[{"id":2}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s.get(&analyst, "/api/v1/tables/gold/people/history").await;
    assert_eq!(status, 403, "history needs MANAGE");
    let (status, _) = s
        .sql(&analyst, "EXPLAIN ANALYZE SELECT * FROM gold.people")
        .await;
    assert_eq!(status, 403, "EXPLAIN ANALYZE needs MANAGE");
    let (status, body) = s.sql(&analyst, "EXPLAIN SELECT * FROM gold.people").await;
    assert_eq!(status, 200);
    assert!(
        !body.to_string().contains(".parquet"),
        "file listings need MANAGE: {body}"
    );
    assert!(body.to_string().contains("logical_plan"), "{body}");
    let (_, body) = s.sql(&admin, "EXPLAIN SELECT * FROM gold.people").await;
    assert!(body.to_string().contains("physical_plan"), "{body}");
    let body = s.sql(&analyst, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = 'strata' AND table_schema <> 'information_schema' ORDER BY 2").await.1;
    // The system view of lineage is listed to whoever may read some table (its rows are
    // those the reader may see at both ends).
    assert_eq!(
        body,
        json!([
            {"table_schema": "system", "table_name": "lineage_edges"},
            {"table_schema": "gold", "table_name": "people"}
        ])
    );
    let (_, body) = s.get(&analyst, "/api/v1/tables").await;
    let names: Vec<&str> = body["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["full_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["gold.people"]);
    let r = s
        .client
        .delete(s.url("/api/v1/tables/gold/people"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A loader appends to bronze but cannot overwrite (MODIFY) or read gold.
    let loader = s.token("lou", &["loader"]);
    let (status, body) = s
        .upload(
            &loader,
            "bronze.raw",
            "application/json",
            br#"[{"id":7}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s
        .upload(
            &loader,
            "bronze.raw",
            "application/json",
            br#"[{"id":7}]"#.to_vec(),
            "?mode=overwrite",
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = s
        .sql(&loader, "INSERT INTO bronze.raw SELECT * FROM gold.people")
        .await;
    assert_eq!(status, 404, "reading gold needs SELECT on it: {body}");
    assert_eq!(s.count("bronze.raw").await, 1);
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// `auth.mode = "jwt"` with PEM public keys (EC, Ed25519), a JWKS file (RSA, by kid),
/// required issuer and audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_mode_with_public_keys_jwks_issuer_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::harness::test_config(dir.path());
    cfg.auth.mode = strata::config::AuthMode::Jwt;
    cfg.auth.algorithms = vec!["RS256".into(), "ES256".into(), "EdDSA".into()];
    cfg.auth.public_key_files = vec![fixture("ec-public.pem"), fixture("ed-public.pem")];
    cfg.auth.jwks_file = Some(fixture("jwks.json"));
    cfg.auth.issuer = Some("https://idp.test/".into());
    cfg.auth.audience = Some("strata".into());
    let s = TestServer::start_with(cfg).await;
    assert!(
        !dir.path().join("data/dev-secret").exists(),
        "no dev secret outside dev mode"
    );

    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    let ed = EncodingKey::from_ed_pem(&std::fs::read(fixture("ed-private.pem")).unwrap()).unwrap();
    let claims = |iss: &str, aud: &str| json!({"sub": "svc", "roles": ["admin"], "exp": now() + 600, "iss": iss, "aud": aud, "tenant": "acme"});

    let accepted = [
        (
            "RS256 via JWKS kid",
            sign(
                Algorithm::RS256,
                Some("test-rsa"),
                &rsa,
                claims("https://idp.test/", "strata"),
            ),
        ),
        (
            "ES256 via PEM",
            sign(
                Algorithm::ES256,
                None,
                &ec,
                claims("https://idp.test/", "strata"),
            ),
        ),
        (
            "EdDSA via PEM",
            sign(
                Algorithm::EdDSA,
                None,
                &ed,
                claims("https://idp.test/", "strata"),
            ),
        ),
    ];
    for (what, token) in &accepted {
        let (status, body) = s.get(token, "/api/v1/tables").await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let rejected = [
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                Some("test-rsa"),
                &rsa,
                claims("https://evil.test/", "strata"),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::ES256,
                None,
                &ec,
                claims("https://idp.test/", "other"),
            ),
        ),
        (
            "missing audience",
            sign(
                Algorithm::ES256,
                None,
                &ec,
                json!({"sub": "svc", "exp": now() + 600, "iss": "https://idp.test/"}),
            ),
        ),
        (
            "missing issuer",
            sign(
                Algorithm::ES256,
                None,
                &ec,
                json!({"sub": "svc", "exp": now() + 600, "aud": "strata"}),
            ),
        ),
        (
            "unknown kid",
            sign(
                Algorithm::RS256,
                Some("nope"),
                &rsa,
                claims("https://idp.test/", "strata"),
            ),
        ),
        (
            "HS256 with the public key as secret",
            forge(
                &public_pem,
                Algorithm::HS256,
                claims("https://idp.test/", "strata"),
            ),
        ),
        (
            "expired",
            sign(
                Algorithm::EdDSA,
                None,
                &ed,
                json!({"sub": "svc", "exp": now() - 600, "iss": "https://idp.test/", "aud": "strata"}),
            ),
        ),
    ];
    for (what, token) in &rejected {
        let (status, body) = s.get(token, "/api/v1/tables").await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    s.stop().await;
}
