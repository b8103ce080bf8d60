//! The scheduler's leader election among replicas sharing a warehouse (lease log).

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Backend, TestServer};

async fn view(s: &TestServer) -> Value {
    let (status, body) = s.get(&s.admin.clone(), "/api/v1/scheduler").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `ok` holds for the view of `s`.
async fn until(s: &TestServer, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let v = view(s).await;
        if ok(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {}", view(s).await);
}

async fn leader_election(backend: Backend) {
    let a = TestServer::start_configured(backend, |cfg| cfg.scheduler.lease_ttl_secs = 5).await;
    let va = until(&a, "a leads", |v| v["is_leader"] == true).await;
    let first = va["epoch"].as_u64().unwrap();
    let b = a.replica().await;
    let vb = until(&b, "b follows a", |v| {
        v["leader"]["id"] == va["replica"]["id"]
    })
    .await;
    assert_eq!(vb["is_leader"], false, "{vb}");
    let vb = until(&b, "b sees both replicas", |v| {
        v["replicas"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert!(vb["epoch"].as_u64().unwrap() >= first, "{vb}");
    let analyst = a.token("ann", &["analyst"]);
    let (status, _) = a.get(&analyst, "/api/v1/scheduler").await;
    assert_eq!(status, 403);

    // The leader stops: b takes over within two TTLs, under a higher epoch.
    let last = view(&a).await["epoch"].as_u64().unwrap();
    // (b works on a's warehouse directory: keep it.)
    let _warehouse = a.stop().await;
    let vb = until(&b, "b takes over", |v| v["is_leader"] == true).await;
    assert!(vb["epoch"].as_u64().unwrap() > last, "{vb}");
    assert_eq!(vb["leader"]["id"], vb["replica"]["id"], "{vb}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_take_over_local() {
    leader_election(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_take_over_s3() {
    leader_election(Backend::S3).await;
}
