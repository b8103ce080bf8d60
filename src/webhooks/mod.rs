//! Webhooks: signed deliveries from third parties, written exactly once into a table
//! (PLATFORM P6).
//!
//! A delivery to `POST /api/v1/ingest/webhooks/{name}` goes through, in order: the route's
//! body limit (`[webhooks] max_body_bytes`, before anything else), the global cap on
//! unverified work (`max_unverified_per_second`), the definition (an unknown name answers
//! exactly like a bad signature), its own body limit, the signature on the raw body
//! ([`verify`]), the per-webhook rate limit (verified deliveries only), the body's parse,
//! and the group commit ([`commit`]), whose landing is what the sender's 2xx means. Nothing
//! is written by a refused delivery.

pub(crate) mod commit;
pub mod definition;
pub mod verify;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::{Schema, SchemaRef};
use bytes::Bytes;
use chrono::Utc;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::{ConnectorsConfig, WebhooksConfig};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::principal::ServicePrincipals;
use crate::storage::TableRef;
use crate::storage::catalog::TableSpec;
use commit::{Committer, Delivery, Landed, Target};
use definition::{
    BODY, DELIVERY_ID, HEADERS, RECEIVED_AT, WEBHOOK, Webhook, WebhookSpec, WebhookStore,
};
use verify::Refusal;

/// How long a replica uses a definition before reading it again: a change through another
/// replica takes effect there within this time.
const DEFINITION_MAX_AGE: Duration = Duration::from_secs(5);
/// Unknown names remembered (so a flood of them does not become a flood of storage reads);
/// beyond it they are not remembered, and the global cap bounds the reads.
const MAX_UNKNOWN_REMEMBERED: usize = 1024;

/// What a sender is told when its delivery landed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    pub delivery_id: String,
    /// True when the delivery was accepted before: nothing was written.
    pub duplicate: bool,
    /// The table version holding it (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// A definition ready to receive: secrets resolved, table loaded, limiter built.
#[derive(Debug)]
struct Live {
    webhook: Webhook,
    keys: Vec<Vec<u8>>,
    max_body: usize,
    limiter: Option<DefaultDirectRateLimiter>,
    /// The typed columns read from the body.
    typed: Option<SchemaRef>,
    target: Arc<Target>,
}

/// A definition as read at an instant (`None`: there was no such webhook).
type Read = (Instant, Option<Arc<Live>>);

#[derive(Debug)]
pub struct Webhooks {
    engine: Arc<Engine>,
    store: WebhookStore,
    cfg: WebhooksConfig,
    secrets: crate::security::secrets::Secrets,
    principals: ServicePrincipals,
    reader: Arc<Principal>,
    /// What "now" is for timestamps, receipt times and dedupe windows (driven in tests).
    clock: Arc<dyn Clock>,
    unverified: DefaultDirectRateLimiter,
    /// Definitions by name, with when they were read (`None`: no such webhook).
    live: Mutex<HashMap<String, Read>>,
    /// Committers by (webhook, definition version).
    committers: Mutex<HashMap<(String, u64), Committer>>,
}

fn per_second(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Webhooks {
    pub fn new(
        engine: Arc<Engine>,
        cfg: &WebhooksConfig,
        connectors: &ConnectorsConfig,
        principals: ServicePrincipals,
        admin_role: &str,
        clock: Arc<dyn Clock>,
    ) -> Webhooks {
        Webhooks {
            store: WebhookStore::new(Arc::clone(engine.catalog().warehouse().store())),
            engine,
            cfg: cfg.clone(),
            secrets: crate::security::secrets::Secrets::new(&connectors.secrets),
            principals,
            reader: Arc::new(Principal {
                subject: "svc:strata".into(),
                roles: [admin_role.to_string()].into(),
                claims: Default::default(),
            }),
            clock,
            unverified: RateLimiter::direct(Quota::per_second(per_second(
                cfg.max_unverified_per_second,
            ))),
            live: Mutex::new(HashMap::new()),
            committers: Mutex::new(HashMap::new()),
        }
    }

    /// The route's own body limit, applied before anything else.
    pub fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }

    fn forget(&self, name: &str) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(name);
        }
    }

    /// Creates or replaces `name` (admin only: the caller checks), creating its table when
    /// absent. Secrets, the writer and the table are checked now, so a definition that is
    /// stored can receive.
    pub async fn put(&self, p: &Arc<Principal>, name: &str, spec: WebhookSpec) -> Result<Webhook> {
        definition::check_name(name)?;
        spec.check(self.cfg.max_body_bytes)?;
        self.keys(&spec)?;
        let writer = self.principals.get(&spec.run_as)?;
        let t = TableRef::parse(&spec.table)?;
        if !self.engine.catalog().exists(&t).await? {
            let table = TableSpec {
                columns: spec.table_columns(),
                partition_by: Vec::new(),
                description: Some(format!("Deliveries of webhook {name}")),
                // Replicas read each other's commits' delivery ids from the change feed.
                properties: [(
                    crate::storage::properties::CHANGE_DATA_FEED.to_string(),
                    "true".to_string(),
                )]
                .into(),
            };
            self.engine.create_table(p, &t, &table, true).await?;
        }
        let schema = self.engine.table_arrow_schema(&t).await?;
        typed_schema(&schema, &spec)?;
        let access = self.engine.access().await?;
        access
            .check(&writer, crate::security::Privilege::Insert, &t)
            .map_err(|_| {
                Error::invalid(format!(
                    "run_as: service principal {} has no INSERT on {t}; grant it first",
                    spec.run_as
                ))
            })?;
        let previous = self.store.latest(name).await?;
        let w = Webhook {
            name: name.to_string(),
            version: previous.map_or(0, |w| w.version + 1),
            updated_at: Utc::now(),
            updated_by: p.subject.clone(),
            spec,
            deleted: false,
        };
        let stored = self.store.store(&w).await;
        self.forget(name);
        stored.map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "webhook {name} was changed concurrently; read it again and retry"
            )),
            other => other,
        })?;
        Ok(w)
    }

    pub async fn get(&self, name: &str) -> Result<Webhook> {
        definition::check_name(name)?;
        match self.store.latest(name).await? {
            Some(w) if !w.deleted => Ok(w),
            _ => Err(Error::NotFound(format!("webhook {name} not found"))),
        }
    }

    pub async fn list(&self) -> Result<Vec<Webhook>> {
        let mut out = Vec::new();
        for name in self.store.names().await? {
            if let Some(w) = self.store.latest(&name).await?
                && !w.deleted
            {
                out.push(w);
            }
        }
        Ok(out)
    }

    /// Deletes `name`: deliveries are refused from now on (here at once, on other replicas
    /// within [`DEFINITION_MAX_AGE`]); the table and its rows stay.
    pub async fn delete(&self, p: &Arc<Principal>, name: &str) -> Result<()> {
        let w = self.get(name).await?;
        let gone = Webhook {
            version: w.version + 1,
            updated_at: Utc::now(),
            updated_by: p.subject.clone(),
            deleted: true,
            ..w
        };
        let stored = self.store.store(&gone).await;
        self.forget(name);
        stored
    }

    fn keys(&self, spec: &WebhookSpec) -> Result<Vec<Vec<u8>>> {
        spec.secrets
            .iter()
            .map(|s| {
                let value = self.secrets.resolve(s)?;
                verify::key(spec.scheme, value.expose())
                    .map_err(|e| Error::invalid(format!("secret {s}: {e}")))
            })
            .collect()
    }

    /// The live definition of `name`, read again when older than [`DEFINITION_MAX_AGE`].
    async fn live(&self, name: &str) -> Result<Option<Arc<Live>>> {
        if let Ok(live) = self.live.lock()
            && let Some((at, w)) = live.get(name)
            && at.elapsed() < DEFINITION_MAX_AGE
        {
            return Ok(w.clone());
        }
        if definition::check_name(name).is_err() {
            return Ok(None);
        }
        let w = match self.store.latest(name).await? {
            Some(w) if !w.deleted => Some(Arc::new(self.prepare(w).await?)),
            _ => None,
        };
        if let Ok(mut live) = self.live.lock()
            && (w.is_some() || live.len() < MAX_UNKNOWN_REMEMBERED)
        {
            live.insert(name.to_string(), (Instant::now(), w.clone()));
        }
        Ok(w)
    }

    async fn prepare(&self, w: Webhook) -> Result<Live> {
        let keys = self.keys(&w.spec)?;
        let writer = self.principals.get(&w.spec.run_as)?;
        let table = TableRef::parse(&w.spec.table)?;
        let schema = self.engine.table_arrow_schema(&table).await?;
        let typed = typed_schema(&schema, &w.spec)?;
        let limiter = w.spec.rate_limit.map(|r| {
            let quota = Quota::per_second(per_second(r.per_second))
                .allow_burst(per_second(r.burst.unwrap_or(r.per_second)));
            RateLimiter::direct(quota)
        });
        let target = Arc::new(Target {
            webhook: w.name.clone(),
            table,
            writer,
            reader: Arc::clone(&self.reader),
            clock: Arc::clone(&self.clock),
            schema,
            window: Duration::from_millis(w.spec.commit_window_ms),
            dedupe_window: chrono::Duration::hours(
                i64::try_from(w.spec.dedupe_window_hours).unwrap_or(i64::MAX / 3_600_000_000),
            ),
            max_keys: self.cfg.max_dedupe_keys,
        });
        Ok(Live {
            max_body: w
                .spec
                .max_body_bytes
                .unwrap_or(self.cfg.max_body_bytes)
                .min(self.cfg.max_body_bytes),
            keys,
            limiter,
            typed,
            target,
            webhook: w,
        })
    }

    fn committer(&self, live: &Live) -> Result<Committer> {
        let mut committers = self
            .committers
            .lock()
            .map_err(|_| Error::internal("webhook committers poisoned"))?;
        let key = (live.webhook.name.clone(), live.webhook.version);
        if let Some(c) = committers.get(&key)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        // An older version's committer ends once its queued deliveries are answered.
        committers.retain(|(n, _), _| *n != live.webhook.name);
        let c = Committer::start(Arc::clone(&self.engine), Arc::clone(&live.target));
        committers.insert(key, c.clone());
        Ok(c)
    }

    /// Receives one delivery (see the module's documentation for the order of checks).
    pub async fn receive(&self, name: &str, headers: &HeaderMap, body: Bytes) -> Result<Receipt> {
        let m = crate::telemetry::metrics();
        if self.unverified.check().is_err() {
            m.webhook_delivery("", "rate_limited");
            return Err(Error::ResourceExhausted(
                "too many webhook deliveries at once; retry later".into(),
            ));
        }
        let refused = || Error::Unauthenticated("the delivery's signature does not verify".into());
        // A definition that cannot receive now (its table dropped, a secret unset, storage
        // down) answers 503, so the sender retries once an admin fixed it.
        let live = self.live(name).await.map_err(|e| {
            tracing::error!(webhook = %name, error = %e, "webhook cannot receive");
            m.webhook_delivery("", "failed");
            Error::Unavailable("the webhook cannot receive deliveries now; retry later".into())
        })?;
        let Some(live) = live else {
            m.webhook_delivery("", "bad_signature");
            return Err(refused());
        };
        let name = live.webhook.name.as_str();
        if body.len() > live.max_body {
            m.webhook_delivery(name, "too_large");
            return Err(Error::PayloadTooLarge(format!(
                "the delivery's body is over this webhook's {} bytes",
                live.max_body
            )));
        }
        let spec = &live.webhook.spec;
        let verified = verify::verify(
            spec.scheme,
            &live.keys,
            spec.signature_header.as_deref(),
            spec.tolerance_secs,
            headers,
            &body,
            self.clock.now().timestamp(),
        );
        let verified = match verified {
            Ok(v) => v,
            Err(Refusal::BadSignature) => {
                m.webhook_delivery(name, "bad_signature");
                return Err(refused());
            }
            Err(Refusal::Stale {
                age_secs,
                tolerance_secs,
            }) => {
                m.webhook_delivery(name, "stale");
                return Err(Error::invalid(format!(
                    "the delivery's timestamp is {age_secs} s from the server's clock; at most {tolerance_secs} s is accepted"
                )));
            }
        };
        if let Some(limiter) = &live.limiter
            && limiter.check().is_err()
        {
            m.webhook_delivery(name, "rate_limited");
            return Err(Error::ResourceExhausted(format!(
                "webhook {name} is over its rate limit; retry later"
            )));
        }
        let received_at = self.clock.now();
        let delivery = match parse(
            &live,
            verified.delivery_id.clone(),
            received_at,
            headers,
            &body,
        ) {
            Ok(d) => d,
            Err(e) => {
                m.webhook_delivery(name, "invalid");
                return Err(e);
            }
        };
        let landed = self.committer(&live)?.submit(delivery).await?;
        Ok(Receipt {
            delivery_id: verified.delivery_id,
            duplicate: landed == Landed::Duplicate,
            version: match landed {
                Landed::Committed(v) => Some(v),
                Landed::Duplicate => None,
            },
        })
    }
}

/// The delivery as a row: its body is kept as text; with typed columns it must be a JSON
/// object, whose top-level fields fill them (fields not declared are ignored: they stay in
/// `body`).
fn parse(
    live: &Live,
    id: String,
    received_at: chrono::DateTime<Utc>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Delivery> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::invalid("the delivery's body is not UTF-8 text"))?;
    let typed = match &live.typed {
        None => None,
        Some(schema) => {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| Error::invalid(format!("the delivery's body is not JSON: {e}")))?;
            if !value.is_object() {
                return Err(Error::invalid(
                    "the delivery's body is not a JSON object; this webhook reads columns from its fields",
                ));
            }
            let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(schema))
                .build_decoder()
                .map_err(|e| Error::internal(e.to_string()))?;
            decoder
                .serialize(std::slice::from_ref(&value))
                .map_err(|e| {
                    Error::invalid(format!(
                        "the delivery's body does not fit the webhook's columns: {e}"
                    ))
                })?;
            decoder.flush().map_err(|e| {
                Error::invalid(format!(
                    "the delivery's body does not fit the webhook's columns: {e}"
                ))
            })?
        }
    };
    let selected: serde_json::Map<String, serde_json::Value> = live
        .webhook
        .spec
        .headers
        .iter()
        .filter_map(|h| {
            let v = headers.get(h.as_str())?.to_str().ok()?;
            Some((
                h.to_ascii_lowercase(),
                serde_json::Value::String(v.to_string()),
            ))
        })
        .collect();
    Ok(Delivery {
        id,
        received_at,
        headers: (!live.webhook.spec.headers.is_empty())
            .then(|| serde_json::Value::Object(selected).to_string()),
        body: text.to_string(),
        typed,
    })
}

/// The table's columns the body fills (all but the delivery columns); `None` when there
/// are none. Every delivery column must be there, and every declared column too. A NOT
/// NULL column keeps its constraint, so a body lacking it is refused alone (400), not in
/// the group commit it would fail for everyone.
fn typed_schema(table: &SchemaRef, spec: &WebhookSpec) -> Result<Option<SchemaRef>> {
    let delivery = [DELIVERY_ID, WEBHOOK, RECEIVED_AT, HEADERS, BODY];
    if let Some(missing) = delivery.iter().find(|c| table.field_with_name(c).is_err()) {
        return Err(Error::invalid(format!(
            "table {}: has no column {missing}; a webhook's table has {} (let Strata create it)",
            spec.table,
            delivery.join(", ")
        )));
    }
    if let Some(c) = spec
        .columns
        .iter()
        .find(|c| table.field_with_name(&c.name).is_err())
    {
        return Err(Error::invalid(format!(
            "columns: {} is not a column of {}",
            c.name, spec.table
        )));
    }
    let fields: Vec<_> = table
        .fields()
        .iter()
        .filter(|f| !delivery.contains(&f.name().as_str()))
        .map(|f| f.as_ref().clone())
        .collect();
    Ok((!fields.is_empty()).then(|| Arc::new(Schema::new(fields))))
}
