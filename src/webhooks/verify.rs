//! Webhook signatures, checked on the raw body before anything parses it.
//!
//! Four schemes, each HMAC-SHA256, compared in constant time (`Mac::verify_slice`), against
//! every configured secret in turn (rotation: the old and the new secret both verify until
//! the old one is removed):
//! - **Standard Webhooks**: `webhook-id`, `webhook-timestamp`, `webhook-signature` (a
//!   space-separated list of `v1,<base64>`); signed content `id.timestamp.body`; secrets
//!   `whsec_<base64>` (the key is the decoded part).
//! - **GitHub**: `X-Hub-Signature-256: sha256=<hex>` over the body.
//! - **Stripe**: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`; signed content `t.body`.
//! - **HMAC**: a named header holding the hex HMAC of the body (`sha256=` prefix allowed).
//!
//! A verified delivery's id is its idempotency key only where the scheme signs it (the
//! `webhook-id` of Standard Webhooks, the event `id` inside a Stripe body); otherwise it is the
//! SHA-256 of the signed body, so an attacker cannot make a genuine delivery look like a
//! duplicate by changing an unsigned header.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How a webhook's sender signs its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Standard Webhooks (Svix, and the many senders following standardwebhooks.com).
    StandardWebhooks,
    Github,
    Stripe,
    /// Hex HMAC-SHA256 of the body in the header named by `signature_header`.
    Hmac,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No configured secret produced the signature (or a signature header is missing or
    /// malformed): 401, the same answer as an unknown webhook.
    BadSignature,
    /// Signed, but its timestamp is outside the tolerance: 400.
    Stale { age_secs: i64, tolerance_secs: u64 },
}

/// A delivery that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The idempotency key (see the module's documentation).
    pub delivery_id: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The HMAC of `parts` under `key` (`None` only for a key HMAC refuses, which SHA-256's
/// HMAC never does: it takes keys of any length).
fn mac(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    for p in parts {
        m.update(p);
    }
    Some(m)
}

/// Whether any of `keys` signs `parts` with `signature` (constant time per key).
fn any_signs(keys: &[Vec<u8>], parts: &[&[u8]], signature: &[u8]) -> bool {
    keys.iter()
        .any(|k| mac(k, parts).is_some_and(|m| m.verify_slice(signature).is_ok()))
}

/// The HMAC key of a secret under `scheme`: Standard Webhooks secrets are `whsec_` followed
/// by base64 (the bytes are the key); every other scheme uses the secret's bytes as they are
/// (Stripe's `whsec_…` included).
pub(crate) fn key(scheme: Scheme, secret: &str) -> Result<Vec<u8>, String> {
    match scheme {
        Scheme::StandardWebhooks => {
            let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
            BASE64.decode(encoded).map_err(|e| {
                format!("a Standard Webhooks secret is whsec_ followed by base64: {e}")
            })
        }
        _ if secret.is_empty() => Err("the secret is empty".into()),
        _ => Ok(secret.as_bytes().to_vec()),
    }
}

/// Checks a delivery: `keys` are [`key`]s of the webhook's secrets, `now` the server's time
/// in Unix seconds. `signature_header` is the header of [`Scheme::Hmac`].
pub(crate) fn verify(
    scheme: Scheme,
    keys: &[Vec<u8>],
    signature_header: Option<&str>,
    tolerance_secs: u64,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Verified, Refusal> {
    let fresh = |t: i64| {
        let age = now - t;
        if age.unsigned_abs() > tolerance_secs {
            Err(Refusal::Stale {
                age_secs: age,
                tolerance_secs,
            })
        } else {
            Ok(())
        }
    };
    match scheme {
        Scheme::StandardWebhooks => {
            let id = header(headers, "webhook-id").ok_or(Refusal::BadSignature)?;
            let ts = header(headers, "webhook-timestamp").ok_or(Refusal::BadSignature)?;
            let t: i64 = ts.parse().map_err(|_| Refusal::BadSignature)?;
            let signatures = header(headers, "webhook-signature").ok_or(Refusal::BadSignature)?;
            let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
            let signed = signatures
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|s| BASE64.decode(s).ok())
                .any(|sig| any_signs(keys, &parts, &sig));
            if !signed {
                return Err(Refusal::BadSignature);
            }
            fresh(t)?;
            Ok(Verified {
                delivery_id: id.to_string(),
            })
        }
        Scheme::Github => {
            let sig = header(headers, "x-hub-signature-256")
                .and_then(|v| v.strip_prefix("sha256="))
                .and_then(|h| hex::decode(h).ok())
                .ok_or(Refusal::BadSignature)?;
            if !any_signs(keys, &[body], &sig) {
                return Err(Refusal::BadSignature);
            }
            Ok(body_hash(body))
        }
        Scheme::Stripe => {
            let value = header(headers, "stripe-signature").ok_or(Refusal::BadSignature)?;
            let mut t = None;
            let mut signatures = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", v)) => t = Some(v),
                    Some(("v1", v)) => signatures.extend(hex::decode(v).ok()),
                    _ => {}
                }
            }
            let ts = t.ok_or(Refusal::BadSignature)?;
            let parts: [&[u8]; 3] = [ts.as_bytes(), b".", body];
            if !signatures.iter().any(|sig| any_signs(keys, &parts, sig)) {
                return Err(Refusal::BadSignature);
            }
            fresh(ts.parse().map_err(|_| Refusal::BadSignature)?)?;
            // The event id is inside the signed body.
            let id = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
            Ok(match id {
                Some(delivery_id) => Verified { delivery_id },
                None => body_hash(body),
            })
        }
        Scheme::Hmac => {
            let name = signature_header.ok_or(Refusal::BadSignature)?;
            let value = header(headers, name).ok_or(Refusal::BadSignature)?;
            let hex_sig = value.strip_prefix("sha256=").unwrap_or(value);
            let sig = hex::decode(hex_sig).map_err(|_| Refusal::BadSignature)?;
            if !any_signs(keys, &[body], &sig) {
                return Err(Refusal::BadSignature);
            }
            Ok(body_hash(body))
        }
    }
}

fn body_hash(body: &[u8]) -> Verified {
    Verified {
        delivery_id: format!("sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    /// The test vector of the Standard Webhooks reference libraries
    /// (github.com/standard-webhooks/standard-webhooks, `libraries/*/tests`).
    #[test]
    fn standard_webhooks_reference_vector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let keys = vec![key(Scheme::StandardWebhooks, secret).unwrap()];
        let v = verify(
            Scheme::StandardWebhooks,
            &keys,
            None,
            300,
            &h,
            body,
            1614265330 + 10,
        );
        assert_eq!(
            v,
            Ok(Verified {
                delivery_id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into()
            })
        );
        // Several signatures in the header: any one verifying is enough.
        let several = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert!(
            verify(
                Scheme::StandardWebhooks,
                &keys,
                None,
                300,
                &several,
                body,
                1614265330
            )
            .is_ok()
        );
        // Ten minutes later: signed, but stale.
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &keys,
                None,
                300,
                &h,
                body,
                1614265330 + 600
            ),
            Err(Refusal::Stale {
                age_secs: 600,
                tolerance_secs: 300
            })
        );
        // A changed body, id or timestamp does not verify.
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &keys,
                None,
                300,
                &h,
                br#"{"test": 2432232315}"#,
                1614265330
            ),
            Err(Refusal::BadSignature)
        );
        let other_id = headers(&[
            ("webhook-id", "msg_other"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &keys,
                None,
                300,
                &other_id,
                body,
                1614265330
            ),
            Err(Refusal::BadSignature)
        );
    }

    /// The example of GitHub's documentation ("Validating webhook deliveries").
    #[test]
    fn github_documented_vector() {
        let keys = vec![key(Scheme::Github, "It's a Secret to Everybody").unwrap()];
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        let v = verify(Scheme::Github, &keys, None, 300, &h, b"Hello, World!", 0).unwrap();
        assert!(v.delivery_id.starts_with("sha256:"));
        assert_eq!(
            verify(Scheme::Github, &keys, None, 300, &h, b"Hello, World?", 0),
            Err(Refusal::BadSignature)
        );
        // Rotation: an unrelated first secret does not stop the second from verifying.
        let rotated = vec![key(Scheme::Github, "new secret").unwrap(), keys[0].clone()];
        assert!(verify(Scheme::Github, &rotated, None, 300, &h, b"Hello, World!", 0).is_ok());
    }

    #[test]
    fn stripe_signs_timestamp_and_body_and_its_event_id_is_the_key() {
        let secret = "whsec_test_secret";
        let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
        let sig = hex::encode(
            mac(secret.as_bytes(), &[b"1700000000", b".", body])
                .unwrap()
                .finalize()
                .into_bytes(),
        );
        let keys = vec![key(Scheme::Stripe, secret).unwrap()];
        let h = headers(&[(
            "stripe-signature",
            &format!("t=1700000000,v1=deadbeef,v1={sig},v0=00"),
        )]);
        assert_eq!(
            verify(Scheme::Stripe, &keys, None, 300, &h, body, 1700000100),
            Ok(Verified {
                delivery_id: "evt_1".into()
            })
        );
        assert!(matches!(
            verify(Scheme::Stripe, &keys, None, 300, &h, body, 1700000000 + 301),
            Err(Refusal::Stale { .. })
        ));
        let moved = headers(&[("stripe-signature", &format!("t=1700000001,v1={sig}"))]);
        assert_eq!(
            verify(Scheme::Stripe, &keys, None, 300, &moved, body, 1700000000),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn generic_hmac_reads_the_named_header() {
        let body = b"{\"a\":1}";
        let sig = hex::encode(mac(b"k", &[body]).unwrap().finalize().into_bytes());
        let keys = vec![key(Scheme::Hmac, "k").unwrap()];
        for value in [sig.clone(), format!("sha256={sig}")] {
            let h = headers(&[("x-signature", &value)]);
            assert!(verify(Scheme::Hmac, &keys, Some("x-signature"), 300, &h, body, 0).is_ok());
        }
        let h = headers(&[("x-other", &sig)]);
        assert_eq!(
            verify(Scheme::Hmac, &keys, Some("x-signature"), 300, &h, body, 0),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn malformed_headers_and_secrets_are_refused_not_panicked_on() {
        let keys = vec![b"k".to_vec()];
        for pairs in [
            vec![],
            vec![
                ("webhook-id", "m"),
                ("webhook-timestamp", "x"),
                ("webhook-signature", "v1,%%%"),
            ],
            vec![
                ("webhook-id", "m"),
                ("webhook-timestamp", "1"),
                ("webhook-signature", "v2,AAAA"),
            ],
        ] {
            let h = headers(&pairs);
            assert_eq!(
                verify(Scheme::StandardWebhooks, &keys, None, 300, &h, b"", 1),
                Err(Refusal::BadSignature)
            );
        }
        let h = headers(&[
            ("stripe-signature", "garbage"),
            ("x-hub-signature-256", "sha256=zz"),
        ]);
        assert_eq!(
            verify(Scheme::Stripe, &keys, None, 300, &h, b"", 1),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(Scheme::Github, &keys, None, 300, &h, b"", 1),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(Scheme::Hmac, &keys, None, 300, &h, b"", 1),
            Err(Refusal::BadSignature)
        );
        assert!(key(Scheme::StandardWebhooks, "whsec_***").is_err());
        assert!(key(Scheme::Github, "").is_err());
    }
}
