//! Signed, principal-bound, expiring envelopes for Flight tickets and prepared handles.
//!
//! Invariant: [`TicketSigner::open`] returns a payload only if its MAC verifies under our key,
//! its kind is the one expected, it has not expired, and the caller's fingerprint equals the
//! one it was issued to. Anything else is rejected before the payload is used.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::error::{Error, Result};
use crate::security::{Authenticator, Principal};

/// Generated from `proto/strata/v1/flight.proto`.
#[allow(missing_debug_implementations, unreachable_pub, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/strata.v1.rs"));
}

type HmacSha256 = Hmac<Sha256>;

/// Envelope kinds; a ticket can't be presented as a handle or vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Statement = 1,
    Prepared = 2,
}

/// SHA-256 over subject, sorted roles and claims, each field length-prefixed: no two
/// different principals encode alike (`sub "ann"` with roles `[analyst, zz]` and
/// `sub "ann\0analyst"` with `[zz]` did when fields were only separated by NUL bytes).
pub(crate) fn fingerprint(p: &Principal) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"strata-principal-v2");
    field(p.subject.as_bytes());
    field(&(p.roles.len() as u64).to_le_bytes());
    for r in &p.roles {
        field(r.as_bytes());
    }
    // BTreeMap: stable order; JSON encodes each claim unambiguously.
    field(&serde_json::to_vec(&p.claims).unwrap_or_default());
    h.finalize().to_vec()
}

pub(crate) struct TicketSigner {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl TicketSigner {
    pub(crate) fn new(key: Vec<u8>, ttl: Duration) -> TicketSigner {
        TicketSigner { key, ttl }
    }

    /// The signer of this deployment's tickets and handles: keyed by `auth.ticket_secret`,
    /// else by a key derived from the HS256 secret (both shared by every replica), else by a
    /// per-process random key (tickets then only work on the replica that issued them).
    pub(crate) fn for_deployment(
        cfg: &AuthConfig,
        auth: &Authenticator,
        ttl: Duration,
    ) -> TicketSigner {
        let key = match &cfg.ticket_secret {
            Some(s) => s.expose().as_bytes().to_vec(),
            None => match auth.derive_key("strata flight ticket v1") {
                Some(k) => k,
                None => {
                    tracing::warn!(
                        "no auth.ticket_secret and no HS256 secret: Flight tickets use a per-process key and only work on this replica"
                    );
                    let mut k = vec![0u8; 32];
                    rand::fill(k.as_mut_slice());
                    k
                }
            },
        };
        TicketSigner::new(key, ttl)
    }

    /// A binding of `p` valid for the configured lifetime.
    pub(crate) fn binding(&self, p: &Principal) -> proto::Binding {
        proto::Binding {
            subject: p.subject.clone(),
            principal_fingerprint: fingerprint(p),
            expires_at_ms: now_ms() + self.ttl.as_millis() as i64,
        }
    }

    fn mac(&self, kind: Kind, payload: &[u8]) -> Result<Vec<u8>> {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .map_err(|e| Error::internal(format!("ticket key: {e}")))?;
        mac.update(&(kind as u32).to_le_bytes());
        mac.update(payload);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    pub(crate) fn seal(&self, kind: Kind, payload: &impl Message) -> Result<Vec<u8>> {
        let payload = payload.encode_to_vec();
        let mac = self.mac(kind, &payload)?;
        Ok(proto::Signed {
            kind: kind as u32,
            payload,
            mac,
        }
        .encode_to_vec())
    }

    /// Verifies and decodes an envelope for `p`.
    pub(crate) fn open<M: Message + Default>(
        &self,
        kind: Kind,
        bytes: &[u8],
        p: &Principal,
        binding: impl Fn(&M) -> Option<&proto::Binding>,
    ) -> Result<M> {
        let invalid = || Error::invalid("invalid or tampered ticket/handle");
        let signed = proto::Signed::decode(bytes).map_err(|_| invalid())?;
        if signed.kind != kind as u32 {
            return Err(invalid());
        }
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .map_err(|e| Error::internal(format!("ticket key: {e}")))?;
        mac.update(&signed.kind.to_le_bytes());
        mac.update(&signed.payload);
        mac.verify_slice(&signed.mac).map_err(|_| invalid())?;
        let msg = M::decode(signed.payload.as_slice()).map_err(|_| invalid())?;
        let b = binding(&msg).ok_or_else(invalid)?;
        if b.expires_at_ms < now_ms() {
            return Err(Error::invalid(
                "ticket/handle expired; ask for a new one (GetFlightInfo / CreatePreparedStatement)",
            ));
        }
        if b.subject != p.subject || b.principal_fingerprint != fingerprint(p) {
            return Err(Error::PermissionDenied(
                "this ticket/handle was issued to another principal".into(),
            ));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sub: &str, roles: &[&str]) -> Principal {
        Principal {
            subject: sub.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            claims: Default::default(),
        }
    }

    #[test]
    fn fingerprints_do_not_confuse_fields() {
        assert_ne!(
            fingerprint(&p("ann", &["analyst", "zz"])),
            fingerprint(&p("ann\0analyst", &["zz"]))
        );
        assert_ne!(fingerprint(&p("a", &["b"])), fingerprint(&p("ab", &[])));
        assert_eq!(fingerprint(&p("a", &["b"])), fingerprint(&p("a", &["b"])));
    }

    #[test]
    fn tickets_are_bound_signed_and_expire() {
        let s = TicketSigner::new(b"k".repeat(32), Duration::from_secs(60));
        let alice = p("alice", &["analyst"]);
        let t = proto::StatementTicket {
            sql: "SELECT 1".into(),
            binding: Some(s.binding(&alice)),
            ..Default::default()
        };
        let bytes = s.seal(Kind::Statement, &t).unwrap();
        let back: proto::StatementTicket = s
            .open(
                Kind::Statement,
                &bytes,
                &alice,
                |m: &proto::StatementTicket| m.binding.as_ref(),
            )
            .unwrap();
        assert_eq!(back.sql, "SELECT 1");
        // Another principal, or the same subject with other roles.
        for other in [p("bob", &["analyst"]), p("alice", &["admin"])] {
            let e = s
                .open(
                    Kind::Statement,
                    &bytes,
                    &other,
                    |m: &proto::StatementTicket| m.binding.as_ref(),
                )
                .unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::PermissionDenied);
        }
        // Wrong kind, tampering, other key.
        assert!(
            s.open(
                Kind::Prepared,
                &bytes,
                &alice,
                |m: &proto::StatementTicket| m.binding.as_ref()
            )
            .is_err()
        );
        let mut tampered = bytes.clone();
        let n = tampered.len();
        tampered[n / 2] ^= 1;
        assert!(
            s.open(
                Kind::Statement,
                &tampered,
                &alice,
                |m: &proto::StatementTicket| m.binding.as_ref()
            )
            .is_err()
        );
        let other_key = TicketSigner::new(b"x".repeat(32), Duration::from_secs(60));
        assert!(
            other_key
                .open(
                    Kind::Statement,
                    &bytes,
                    &alice,
                    |m: &proto::StatementTicket| m.binding.as_ref()
                )
                .is_err()
        );
        // Expired.
        let short = TicketSigner::new(b"k".repeat(32), Duration::from_secs(0));
        let mut t = t;
        t.binding = Some(proto::Binding {
            expires_at_ms: now_ms() - 1,
            ..short.binding(&alice)
        });
        let bytes = short.seal(Kind::Statement, &t).unwrap();
        assert!(
            short
                .open(
                    Kind::Statement,
                    &bytes,
                    &alice,
                    |m: &proto::StatementTicket| m.binding.as_ref()
                )
                .is_err()
        );
    }
}
