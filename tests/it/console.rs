//! The admin console: its files over plain HTTP (headers, caching, fallback, traversal,
//! size), the committed build against its sources, and its screens in headless Chromium
//! against the real server, with the same tokens, grants, filters and masks as the API.

use std::collections::BTreeSet;

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::flows::{bundle, deployer, with_etl};
use crate::harness::{Backend, TestServer};

async fn raw(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = s.client.get(s.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The assets index.html names (`./assets/…`).
fn assets(html: &str) -> Vec<String> {
    html.split(['"', '\''])
        .filter(|p| p.starts_with("./assets/"))
        .map(|p| p.trim_start_matches("./").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_are_served_with_strict_headers_cached_and_never_outside_the_build() {
    let s = TestServer::start().await;
    // The bare prefix redirects to the app's root; the root is index.html, revalidated.
    let r = s.client.get(s.url("/console")).send().await.unwrap();
    assert_eq!(r.url().path(), "/console/", "followed the redirect");
    let r = raw(&s, "/console/", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    let csp = header(&r, "content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "referrer-policy"), "no-referrer");
    assert!(r.headers().get("set-cookie").is_none(), "no cookies");
    let etag = header(&r, "etag");
    let html = r.text().await.unwrap();
    assert!(html.contains("<base href=\"/console/\" />"), "{html}");
    // No inline script: every script is a file of the build.
    assert!(
        !html.contains("<script>") && !html.contains("<script type=\"module\">"),
        "{html}"
    );
    let r = raw(&s, "/console/", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());

    // Hashed assets: typed, immutable, gzipped when asked, 304 on their tag.
    let files = assets(&html);
    assert!(files.iter().any(|f| f.ends_with(".js")), "{html}");
    let mut payload = html.len();
    for file in &files {
        let path = format!("/console/{file}");
        let r = raw(&s, &path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            header(&r, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        let ty = header(&r, "content-type");
        if file.ends_with(".js") {
            assert_eq!(ty, "text/javascript; charset=utf-8");
        } else if file.ends_with(".css") {
            assert_eq!(ty, "text/css; charset=utf-8");
        }
        assert_eq!(header(&r, "content-encoding"), "gzip", "{path}");
        let tag = header(&r, "etag");
        payload += r.bytes().await.unwrap().len();
        let again = raw(
            &s,
            &path,
            &[("accept-encoding", "gzip"), ("if-none-match", &tag)],
        )
        .await;
        assert_eq!(again.status(), 304, "{path}");
        // Without gzip: the plain bytes under their own tag.
        let plain = raw(&s, &path, &[]).await;
        assert_eq!(plain.status(), 200);
        assert!(plain.headers().get("content-encoding").is_none());
        assert_ne!(header(&plain, "etag"), tag);
    }
    assert!(
        payload < 500 * 1024,
        "the console's payload is {payload} bytes gzipped"
    );

    // Routes of the app (no extension) get index.html; anything else under the prefix is
    // 404, never a file outside the build.
    for route in [
        "/console/catalog/gold/sales",
        "/console/sql",
        "/console/pipelines/p/models/gold/x/",
    ] {
        let r = raw(&s, route, &[]).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{route}");
        assert!(body.contains("<div id=\"app\">"), "{route}");
    }
    for bad in [
        "/console/..%2f..%2fetc/passwd",
        "/console/..%2F..%2Fetc%2Fpasswd",
        "/console/%2e%2e/%2e%2e/etc/passwd",
        "/console/assets/..%5c..%5cCargo.toml",
        "/console/assets/missing.js",
        "/console/favicon.ico",
        "/console/.env",
        "/console/index.php",
        "/console/pipelines/p/models/gold.x",
        "/console//etc/passwd",
    ] {
        let r = raw(&s, bad, &[]).await;
        assert_eq!(r.status(), 404, "{bad}");
        assert!(!r.text().await.unwrap().contains("root:"), "{bad}");
    }
    // `..` itself never reaches the console (normalized or refused before it).
    let url = format!("http://{}/console/../../etc/passwd", s.http);
    let r = s.client.get(&url).send().await.unwrap();
    assert_ne!(r.status(), 200, "{url}");

    // The console's data needs a bearer token: none from a query string or a cookie.
    let token = s.admin.clone();
    let cookie = format!("token={token}; access_token={token}; Authorization=Bearer%20{token}");
    for (what, path, headers) in [
        (
            "query",
            format!("/api/v1/tables?access_token={token}"),
            vec![],
        ),
        (
            "query token",
            format!("/api/v1/tables?token={token}"),
            vec![],
        ),
        (
            "cookie",
            "/api/v1/tables".to_string(),
            vec![("cookie", cookie.as_str())],
        ),
    ] {
        assert_eq!(
            raw(&s, &path, &headers).await.status(),
            401,
            "token in a {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_console_or_another_path_serves_nothing_at_console() {
    let s = TestServer::start_configured(Backend::Local, |cfg| cfg.console.enabled = false).await;
    assert_eq!(raw(&s, "/console/", &[]).await.status(), 404);
    let s = TestServer::start_configured(Backend::Local, |cfg| {
        cfg.console.path = "/ui/admin".into();
    })
    .await;
    assert_eq!(raw(&s, "/console/", &[]).await.status(), 404);
    let r = raw(&s, "/ui/admin/catalog", &[]).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<base href=\"/ui/admin/\" />")
    );
    let mut cfg = strata::config::Config::default();
    for bad in [
        "/",
        "console",
        "/console/",
        "/api/console",
        "/a b",
        "/a/../b",
    ] {
        cfg.console.path = bad.into();
        assert!(
            cfg.problems().iter().any(|p| p.contains("console.path")),
            "{bad}"
        );
    }
}

/// The committed build (`console/dist`) is what its sources build to: `npm ci` and the
/// build into a scratch directory, compared file by file.
#[test]
fn the_committed_console_build_matches_its_sources() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("npm")
            .args(args)
            .current_dir(&root)
            .output()
            .expect("npm (Node.js) is needed for the console's build check");
        assert!(
            out.status.success(),
            "npm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("dist");
    run(&["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    run(&["exec", "--", "tsc", "--noEmit"]);
    run(&[
        "exec",
        "--",
        "vite",
        "build",
        "--logLevel",
        "error",
        "--outDir",
        out.to_str().unwrap(),
        "--emptyOutDir",
    ]);
    let listing = |dir: &std::path::Path| -> BTreeSet<(String, Vec<u8>)> {
        let mut all = BTreeSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let name = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                    all.insert((name, std::fs::read(&p).unwrap()));
                }
            }
        }
        all
    };
    let committed = listing(&root.join("dist"));
    let fresh = listing(&out);
    let names =
        |s: &BTreeSet<(String, Vec<u8>)>| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&fresh),
        "console/dist is stale: run `npm ci && npm run build` in console/ and commit dist/"
    );
    assert!(
        committed == fresh,
        "console/dist differs from a fresh build of console/: run `npm run build` there and commit dist/"
    );
}

/// The viewer's world: gold.sales (region-filtered, customer masked) and gold.secret and
/// silver.staging, which only admins read (the role `viewer` has no grant from the
/// harness's configuration, only the run-time one here).
async fn analyst_world(s: &TestServer) -> String {
    for sql in [
        "CREATE TABLE gold.sales (id BIGINT, region STRING, customer STRING, amount DOUBLE)",
        "INSERT INTO gold.sales VALUES (1, 'eu', 'alice', 10.0), (2, 'eu', 'bob', 20.0), (3, 'us', 'carol', 30.0), (4, 'us', 'dave', 40.0), (5, 'apac', 'erin', 50.0)",
        "CREATE TABLE gold.secret (id BIGINT)",
        "CREATE TABLE silver.staging (id BIGINT)",
    ] {
        s.sql_ok(sql).await;
    }
    let admin = s.admin.clone();
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/grants",
            json!({"grants": [{"role": "viewer", "privilege": "SELECT", "on": "gold.sales"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/gold/sales/policies",
            json!({
                "row_filters": [{"roles": ["viewer"], "predicate": "region = 'eu'"}],
                "column_masks": [{"column": "customer", "mask": "'***'"}],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.token("ana", &["viewer"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_sees_in_the_catalog_exactly_the_tables_the_api_lists_for_them() {
    let s = TestServer::start().await;
    let analyst = analyst_world(&s).await;
    let b = Browser::start("catalog").await;
    b.guard(async {
        // A bad token is refused on the sign-in screen, with the server's reason.
        b.client.goto(&s.url("/console/")).await.unwrap();
        b.wait(Locator::Css("#token")).await.send_keys("not-a-jwt").await.unwrap();
        b.click("form button[type=submit]").await;
        let refused = b.wait(Locator::Css("form .error")).await.text().await.unwrap();
        assert!(refused.starts_with("401"), "{refused}");
        let stored = b.js("return sessionStorage.getItem('strata.token')").await;
        assert_eq!(stored, Value::Null, "a refused token is not kept");
        b.sign_in(&s.url("/console/"), &analyst).await;
        b.shot("overview").await;
        b.client.goto(&s.url("/console/catalog")).await.unwrap();
        b.wait(Locator::Css("li[data-table]")).await;
        let shown = b
            .until(
                "the catalog lists tables",
                "return Array.from(document.querySelectorAll('li[data-table]')).map(e => e.dataset.table)",
            )
            .await;
        let shown: BTreeSet<String> = serde_json::from_value(shown).unwrap();
        let (status, listed) = s.get(&analyst, "/api/v1/tables").await;
        assert_eq!(status, 200);
        let listed: BTreeSet<String> = listed["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["full_name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(shown, listed);
        assert!(shown.contains("gold.sales") && !shown.contains("gold.secret"), "{shown:?}");
        // The table page: schema, and no policy editor for a non-admin.
        b.client.goto(&s.url("/console/catalog/gold/sales")).await.unwrap();
        b.wait(Locator::Css("table[aria-label=Schema]")).await;
        b.until(
            "the preview arrives",
            "return document.querySelectorAll('[role=grid] [role=row][aria-rowindex]').length > 1",
        )
        .await;
        assert!(b.client.find(Locator::Css("#save-policies")).await.is_err());
        b.shot("table").await;
        // Dark, by the theme switch: the page's own colours change.
        let light = b.js("return getComputedStyle(document.body).backgroundColor").await;
        for _ in 0..3 {
            let theme = b.js("return document.documentElement.dataset.theme").await;
            if theme == json!("dark") {
                break;
            }
            b.click("button[aria-label^='Theme']").await;
        }
        let dark = b.js("return getComputedStyle(document.body).backgroundColor").await;
        assert_eq!(dark, json!("rgb(20, 23, 27)"), "dark background (light was {light})");
        b.shot("table-dark").await;
    })
    .await;
}

/// Types `sql` into the SQL screen and runs it; the row count it reports.
async fn run_sql(b: &Browser, s: &TestServer, sql: &str) -> u64 {
    b.client.goto(&s.url("/console/sql")).await.unwrap();
    let editor = b.wait(Locator::Css("#sql-editor")).await;
    editor.clear().await.unwrap();
    editor.send_keys(sql).await.unwrap();
    b.js("document.querySelector('#sql-suggestions') && document.querySelector('#sql-editor').dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true})); return true").await;
    b.click("#run-query").await;
    let n = b
        .until(
            "the result's row count",
            "const e = document.querySelector('#row-count'); const err = document.querySelector('.error'); return err ? 'error: ' + err.textContent : (e ? e.textContent : null)",
        )
        .await;
    let n = n.as_str().unwrap();
    assert!(!n.starts_with("error"), "{n}");
    n.parse().unwrap()
}

/// The grid's cells as text (the rendered ones).
async fn cells(b: &Browser) -> Vec<String> {
    let v = b.js("return Array.from(document.querySelectorAll('[role=gridcell]')).map(c => c.textContent)").await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_screen_shows_masked_values_and_the_filtered_rows_and_an_admin_edit_applies_to_the_next_query()
 {
    let s = TestServer::start().await;
    let analyst = analyst_world(&s).await;
    let b = Browser::start("sql").await;
    b.guard(async {
        b.sign_in(&s.url("/console/"), &analyst).await;
        let n = run_sql(
            &b,
            &s,
            "SELECT id, region, customer FROM gold.sales ORDER BY id",
        )
        .await;
        assert_eq!(n, 2, "the analyst's rows: eu only");
        // Timing and cache state from the response's headers.
        let summary = b
            .wait(Locator::Css("#result-summary"))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            summary.contains("to the first batch") && summary.contains("cache miss"),
            "{summary}"
        );
        let n = run_sql(
            &b,
            &s,
            "SELECT id, region, customer FROM gold.sales ORDER BY id",
        )
        .await;
        assert_eq!(n, 2);
        let summary = b
            .wait(Locator::Css("#result-summary"))
            .await
            .text()
            .await
            .unwrap();
        assert!(summary.contains("cache hit"), "{summary}");
        let shown = cells(&b).await;
        assert!(
            shown.iter().filter(|c| *c == "***").count() == 2,
            "{shown:?}"
        );
        for name in ["alice", "bob", "carol", "us"] {
            assert!(!shown.iter().any(|c| c == name), "{name} in {shown:?}");
        }
        b.shot("analyst-masked").await;
    })
    .await;
    drop(b);

    // The admin changes the analyst's filter on the policies screen.
    let b = Browser::start("policies").await;
    b.guard(async {
        b.sign_in(&s.url("/console/"), &s.admin).await;
        b.client.goto(&s.url("/console/catalog/gold/sales")).await.unwrap();
        let predicate = b.wait(Locator::Css("#filter-0-predicate")).await;
        assert_eq!(predicate.prop("value").await.unwrap().as_deref(), Some("region = 'eu'"));
        predicate.clear().await.unwrap();
        predicate.send_keys("region = 'us'").await.unwrap();
        b.click("#save-policies").await;
        b.until(
            "the save is confirmed",
            "const e = document.querySelector('#policies-note'); const err = document.querySelector('form.policies .error'); return err ? 'error ' + err.textContent : (e && e.textContent.startsWith('Saved') ? e.textContent : null)",
        )
        .await;
        b.shot("saved").await;
    })
    .await;
    let (status, rows) = s
        .sql(&analyst, "SELECT id, region FROM gold.sales ORDER BY id")
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        rows,
        json!([{"id": 3, "region": "us"}, {"id": 4, "region": "us"}])
    );
    let (_, doc) = s
        .get(&s.admin.clone(), "/api/v1/tables/gold/sales/policies")
        .await;
    assert_eq!(
        doc["column_masks"][0]["mask"], "'***'",
        "the mask kept: {doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_rows_render_virtualized_and_scroll() {
    let s = TestServer::start().await;
    let b = Browser::start("bigresult").await;
    b.guard(async {
        b.sign_in(&s.url("/console/"), &s.admin).await;
        let n = run_sql(
            &b,
            &s,
            "SELECT x, 'row ' || CAST(x AS STRING) AS label FROM (SELECT unnest(range(0, 100000)) AS x) ORDER BY x",
        )
        .await;
        assert_eq!(n, 100_000);
        let rendered = b.js("return document.querySelectorAll('.grid-row').length").await;
        assert!(rendered.as_u64().unwrap() < 200, "rendered {rendered} rows");
        // Scroll to the end: the last row is drawn, and the page keeps answering.
        let started = std::time::Instant::now();
        b.js("const g = document.querySelector('.grid-body'); g.scrollTop = g.scrollHeight; g.dispatchEvent(new Event('scroll')); return true").await;
        b.until(
            "the last row is drawn",
            "return Array.from(document.querySelectorAll('[role=gridcell]')).some(c => c.textContent === 'row 99999')",
        )
        .await;
        let answered = b.js("return 1 + 1").await;
        assert_eq!(answered, json!(2));
        eprintln!("scrolled 100,000 rows to the end in {:?}", started.elapsed());
        b.shot("scrolled").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_run_from_the_console_turns_its_node_green_and_lineage_shows_the_upstream_edge()
{
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    s.sql_ok("CREATE TABLE bronze.events (id BIGINT, kind STRING)")
        .await;
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a'), (2, 'b'), (3, 'a')")
        .await;
    let deployer = deployer(&s);
    let (status, body) = s
        .put_json(
            &deployer,
            "/api/v1/pipelines/events",
            bundle(&[(
                "gold/kinds.sql",
                "/* strata\nkind = \"table\"\n*/\nSELECT kind, count(*) AS n FROM bronze.events GROUP BY kind",
            )]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let b = Browser::start("pipeline").await;
    b.guard(async {
        b.sign_in(&s.url("/console/"), &deployer).await;
        b.client.goto(&s.url("/console/pipelines/events")).await.unwrap();
        let node = b.wait(Locator::Css("g[data-node='gold.kinds']")).await;
        assert_eq!(node.attr("data-status").await.unwrap().as_deref(), Some("never"));
        b.click("#run-now").await;
        b.until(
            "the run succeeded",
            "const e = document.querySelector('#pipeline-note'); return e && /succeeded|failed/.test(e.textContent) ? e.textContent : null",
        )
        .await;
        let note = b.wait(Locator::Css("#pipeline-note")).await.text().await.unwrap();
        assert!(note.contains("succeeded"), "{note}");
        let fill = b
            .until(
                "the node turned green",
                "const r = document.querySelector(\"g[data-node='gold.kinds'][data-status='succeeded'] rect\"); return r ? getComputedStyle(r).fill : null",
            )
            .await;
        assert_eq!(fill, json!("rgb(26, 127, 55)"), "green");
        b.shot("dag").await;
        // The model's page, by its node: its SQL and its run.
        b.click("g[data-node='gold.kinds']").await;
        let sql = b.wait(Locator::Css("pre.code")).await.text().await.unwrap();
        assert!(sql.contains("FROM bronze.events"), "{sql}");
        b.wait(Locator::Css("table[aria-label='Model runs'] .status-succeeded")).await;
        b.shot("model").await;
        // The model's lineage: the upstream edge from the source.
        b.client.goto(&s.url("/console/lineage/gold/kinds")).await.unwrap();
        b.wait(Locator::Css("path[data-edge='bronze.events>gold.kinds']")).await;
        b.shot("lineage").await;
    })
    .await;
    let (_, graph) = s
        .get(
            &deployer,
            "/api/v1/lineage/tables/gold/kinds?direction=upstream",
        )
        .await;
    let edges: Vec<&Value> = graph["edges"].as_array().unwrap().iter().collect();
    assert!(
        edges.iter().any(|e| e["from"] == "bronze.events"),
        "{graph}"
    );
}
