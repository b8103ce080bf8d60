//! JWT authentication.
//!
//! Invariant: a [`Principal`] exists only for a token whose signature verified with a
//! configured key, whose algorithm is on the allow-list and matches the key's family, and
//! whose `exp` (required), `nbf`, `iss` and `aud` (when configured) hold. `alg: none` can't be
//! on the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, AuthMode, Secret, ServerConfig};
use crate::error::{Error, Result};
use crate::security::Principal;

/// File under `server.data_dir` holding the generated dev secret.
pub(crate) const DEV_SECRET_FILE: &str = "dev-secret";

/// Problems in `[auth]` that need the algorithm list (see `server::config_problems`).
pub(crate) fn config_problems(cfg: &AuthConfig) -> Vec<String> {
    cfg.algorithms
        .iter()
        .filter(|alg| parse_algorithm(alg).is_none())
        .map(|alg| format!(
            "auth.algorithms: unknown or disallowed algorithm {alg:?} (use HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA)"
        ))
        .collect()
}

pub(crate) fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name.to_ascii_uppercase().as_str() {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "PS256" => Some(Algorithm::PS256),
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        "EDDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

/// Verifies tokens; in dev mode (or with an HS256 secret) also mints them.
pub struct Authenticator {
    algorithms: Vec<Algorithm>,
    hmac: Option<(DecodingKey, EncodingKey)>,
    /// Key material for [`Authenticator::derive_key`].
    secret: Option<Secret>,
    public_keys: Vec<DecodingKey>,
    jwks: Option<JwkSet>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.algorithms)
            .field("hmac", &self.hmac.is_some())
            .field("public_keys", &self.public_keys.len())
            .field("jwks", &self.jwks.as_ref().map(|j| j.keys.len()))
            .finish()
    }
}

impl Authenticator {
    /// Builds the authenticator; in dev mode creates the secret under `data_dir` if missing.
    pub fn from_config(auth: &AuthConfig, server: &ServerConfig) -> Result<Authenticator> {
        let algorithms = auth
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a).ok_or_else(|| Error::Config(format!("algorithm {a}"))))
            .collect::<Result<Vec<_>>>()?;
        let secret = hmac_secret(auth, server)?;
        if let Some(s) = &secret
            && s.expose().len() < 32
        {
            return Err(Error::Config(
                "the HS256 secret is weaker than 32 bytes".into(),
            ));
        }
        let hmac = secret.as_ref().map(|s| {
            (
                DecodingKey::from_secret(s.expose().as_bytes()),
                EncodingKey::from_secret(s.expose().as_bytes()),
            )
        });
        let mut public_keys = Vec::new();
        for path in &auth.public_key_files {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|e| {
                    Error::Config(format!(
                        "{}: not an RSA, EC or Ed25519 public key: {e}",
                        path.display()
                    ))
                })?;
            public_keys.push(key);
        }
        let jwks = match &auth.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                Some(serde_json::from_str::<JwkSet>(&text).map_err(|e| {
                    Error::Config(format!("{}: not a JWKS document: {e}", path.display()))
                })?)
            }
            None => None,
        };
        Ok(Authenticator {
            algorithms,
            hmac,
            secret,
            public_keys,
            jwks,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway_secs,
        })
    }

    /// Verifies `token` and returns its principal.
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Error::Unauthenticated("malformed bearer token".into()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Error::Unauthenticated(format!(
                "token algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // A configured issuer/audience must be present, not just right when present:
        // jsonwebtoken only compares `aud`/`iss` that a token carries.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let family = header.alg.family();
        let mut candidates: Vec<DecodingKey> = Vec::new();
        if family == jsonwebtoken::AlgorithmFamily::Hmac {
            if let Some((dk, _)) = &self.hmac {
                candidates.push(dk.clone());
            }
        } else {
            if let Some(jwks) = &self.jwks {
                let jwks_keys: Vec<_> = match &header.kid {
                    Some(kid) => jwks.find(kid).into_iter().collect(),
                    None => jwks.keys.iter().collect(),
                };
                for jwk in jwks_keys {
                    if let Ok(k) = DecodingKey::from_jwk(jwk) {
                        candidates.push(k);
                    }
                }
            }
            candidates.extend(self.public_keys.iter().cloned());
        }
        candidates.retain(|k| k.family() == family);
        if candidates.is_empty() {
            return Err(Error::Unauthenticated(
                "no key configured for this token".into(),
            ));
        }
        let mut last = None;
        for key in &candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return to_principal(data.claims),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Unauthenticated(
            match last.as_ref().map(|e| e.kind()) {
                Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => "token expired".into(),
                Some(jsonwebtoken::errors::ErrorKind::ImmatureSignature) => {
                    "token not valid yet (nbf)".into()
                }
                Some(jsonwebtoken::errors::ErrorKind::InvalidIssuer) => {
                    "token issuer rejected".into()
                }
                Some(jsonwebtoken::errors::ErrorKind::InvalidAudience) => {
                    "token audience rejected".into()
                }
                Some(jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c)) => {
                    format!("token lacks the required claim {c}")
                }
                _ => "invalid token".into(),
            },
        ))
    }

    /// A key for another purpose (e.g. Flight tickets) derived from the HS256 secret:
    /// HMAC-SHA256(secret, label). `None` without an HS256 secret.
    pub fn derive_key(&self, label: &str) -> Option<Vec<u8>> {
        use hmac::Mac;
        let secret = self.secret.as_ref()?;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes()).ok()?;
        mac.update(label.as_bytes());
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// Mints an HS256 token (dev mode and `strata token`).
    pub fn mint(
        &self,
        subject: &str,
        roles: &[String],
        extra: BTreeMap<String, serde_json::Value>,
        ttl: Duration,
    ) -> Result<String> {
        let Some((_, ek)) = &self.hmac else {
            return Err(Error::Config(
                "minting tokens needs an HS256 secret (auth.mode = \"dev\" or auth.hs256_secret)"
                    .into(),
            ));
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Error::internal(e.to_string()))?
            .as_secs();
        let claims = Claims {
            sub: subject.to_string(),
            exp: now + ttl.as_secs(),
            nbf: Some(now.saturating_sub(1)),
            iat: Some(now),
            roles: roles.to_vec(),
            extra,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, ek)
            .map_err(|e| Error::internal(format!("cannot sign token: {e}")))
    }
}

/// The principal of verified claims. Subjects and roles with control characters are
/// refused: they name nobody a policy was written for, and they are how separator-based
/// encodings are confused.
fn to_principal(c: Claims) -> Result<Principal> {
    let mut claims = c.extra;
    for reserved in ["iss", "aud", "jti"] {
        claims.remove(reserved);
    }
    let printable = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    if !printable(&c.sub) {
        return Err(Error::Unauthenticated(
            "token subject is empty or has control characters".into(),
        ));
    }
    if !c.roles.iter().all(|r| printable(r)) {
        return Err(Error::Unauthenticated(
            "token roles are empty or have control characters".into(),
        ));
    }
    Ok(Principal {
        subject: c.sub,
        roles: c.roles.into_iter().collect::<BTreeSet<_>>(),
        claims,
    })
}

/// The HS256 secret: configured value, a configured file, or (dev mode) the generated one.
fn hmac_secret(auth: &AuthConfig, server: &ServerConfig) -> Result<Option<Secret>> {
    if let Some(s) = &auth.hs256_secret {
        return Ok(Some(s.clone()));
    }
    if let Some(path) = &auth.hs256_secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        return Ok(Some(Secret::new(text.trim())));
    }
    if auth.mode == AuthMode::Dev {
        return dev_secret(&server.data_dir).map(Some);
    }
    Ok(None)
}

/// Reads or creates (mode 0600) the dev secret under `data_dir`.
fn dev_secret(data_dir: &Path) -> Result<Secret> {
    let path = data_dir.join(DEV_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok(Secret::new(text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Config(format!("{}: {e}", path.display()))),
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::Config(format!("{}: {e}", data_dir.display())))?;
    let mut bytes = [0u8; 48];
    rand::fill(&mut bytes);
    let secret = hex::encode(bytes);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(&path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(secret.as_bytes())?;
            Ok(Secret::new(secret))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(Secret::new(std::fs::read_to_string(&path)?.trim()))
        }
        Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(secret: &str) -> Authenticator {
        let auth = AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: Some(Secret::new(secret)),
            ..AuthConfig::default()
        };
        Authenticator::from_config(&auth, &ServerConfig::default()).unwrap()
    }

    #[test]
    fn round_trip_and_rejections() {
        let a = hs("0123456789abcdef0123456789abcdef-x");
        let t = a
            .mint(
                "alice",
                &["analyst".into()],
                BTreeMap::new(),
                Duration::from_secs(60),
            )
            .unwrap();
        let p = a.authenticate(&t).unwrap();
        assert_eq!(p.subject, "alice");
        assert!(p.has_role("analyst"));

        let other = hs("another-secret-0123456789abcdef-xyz");
        assert!(other.authenticate(&t).is_err());
        assert!(a.authenticate("garbage").is_err());
    }

    #[test]
    fn control_characters_in_subjects_and_roles_are_refused() {
        let a = hs("0123456789abcdef0123456789abcdef-x");
        let ttl = Duration::from_secs(60);
        for (sub, roles) in [
            ("ann\0analyst", vec!["zz".to_string()]),
            ("ann", vec!["analyst\nadmin".to_string()]),
            ("", vec![]),
        ] {
            let t = a.mint(sub, &roles, BTreeMap::new(), ttl).unwrap();
            let e = a.authenticate(&t).unwrap_err();
            assert_eq!(
                e.kind(),
                crate::error::ErrorKind::Unauthenticated,
                "{sub:?}"
            );
        }
    }

    #[test]
    fn weak_secrets_are_refused() {
        let auth = AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: Some(Secret::new("short")),
            ..AuthConfig::default()
        };
        assert!(Authenticator::from_config(&auth, &ServerConfig::default()).is_err());
    }
}
