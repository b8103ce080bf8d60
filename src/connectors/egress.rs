//! Where connectors may go, and how they get there: the allow-list of `[connectors]
//! allowed_hosts`, address checks with the resolved addresses pinned, manual redirects
//! (each hop checked), the rate limit, retries, 429 waits and the response size cap.
//!
//! A host passes when an entry names it (or, in dev auth mode with an empty list, when it
//! is public); then every address it resolves to must be public, or lie in an address or
//! network entry: loopback, private, link-local, shared, unspecified, multicast and
//! IPv4-mapped IPv6 addresses are refused unless listed. The request then goes to exactly
//! those addresses (`reqwest`'s resolve override), so a second DNS answer cannot point it
//! elsewhere; proxies from the environment are ignored for the same reason.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use ipnet::IpNet;

use crate::error::{Error, Result};

/// One `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Allowed {
    /// A host name, exactly (lower case).
    Host(String),
    /// `*.suffix`: any name ending `.suffix`.
    Suffix(String),
    /// An address or a network.
    Net(IpNet),
}

impl Allowed {
    pub(crate) fn parse(entry: &str) -> std::result::Result<Allowed, String> {
        let e = entry.trim().trim_start_matches('[').trim_end_matches(']');
        if let Ok(net) = e.parse::<IpNet>() {
            return Ok(Allowed::Net(net));
        }
        if let Ok(ip) = e.parse::<IpAddr>() {
            return Ok(Allowed::Net(IpNet::from(ip)));
        }
        let (wild, name) = match e.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, e),
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !ok {
            return Err(format!(
                "{entry:?} is not a host name, *.suffix, address or network"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if wild {
            Allowed::Suffix(name)
        } else {
            Allowed::Host(name)
        })
    }
}

/// Whether `ip` is on the public internet (anything else must be listed).
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // Benchmarking, 198.18.0.0/15; reserved, 240.0.0.0/4.
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // IPv4-mapped (::ffff:0:0/96) and IPv4-compatible: they reach IPv4 hosts.
                || v6.to_ipv4().is_some()
                // Unique local fc00::/7, link-local fe80::/10, documentation 2001:db8::/32.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// The egress policy of this server.
#[derive(Debug, Clone)]
pub(crate) struct Egress {
    allowed: Vec<Allowed>,
    /// Dev auth mode: with an empty list, public hosts are reachable.
    dev: bool,
}

impl Egress {
    pub(crate) fn new(entries: &[String], dev: bool) -> Egress {
        Egress {
            allowed: entries
                .iter()
                .filter_map(|e| Allowed::parse(e).ok())
                .collect(),
            dev,
        }
    }

    fn listed_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allowed.iter().any(|a| match a {
            Allowed::Net(n) => n.contains(&ip),
            _ => false,
        })
    }

    fn listed_name(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed.iter().any(|a| match a {
            Allowed::Host(h) => *h == host,
            Allowed::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.ends_with('.')),
            Allowed::Net(_) => false,
        })
    }

    /// Checks `url` and resolves its host: the addresses to pin, or why it may not be
    /// reached.
    pub(crate) async fn check(&self, url: &url::Url) -> Result<(String, Vec<SocketAddr>)> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid(format!(
                "{}: only http and https are reached",
                redact(url)
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::invalid(format!("{}: no host", redact(url))))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Error::invalid(format!("{}: no port", redact(url))))?;
        let open = self.dev && self.allowed.is_empty();
        if self.allowed.is_empty() && !self.dev {
            return Err(Error::PermissionDenied(
                "[connectors] allowed_hosts is empty: outside dev mode, list the hosts connectors may reach".into(),
            ));
        }
        let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
            if !(self.listed_ip(ip) || (open && is_public(ip))) {
                return Err(Error::PermissionDenied(format!(
                    "{host} is not in [connectors] allowed_hosts"
                )));
            }
            vec![SocketAddr::new(ip, port)]
        } else {
            if !(open || self.listed_name(&host)) {
                return Err(Error::PermissionDenied(format!(
                    "{host} is not in [connectors] allowed_hosts"
                )));
            }
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| Error::Unavailable(format!("resolving {host}: {e}")))?
                .collect();
            if found.is_empty() {
                return Err(Error::Unavailable(format!("{host} has no address")));
            }
            found
        };
        for a in &addrs {
            if !is_public(a.ip()) && !self.listed_ip(a.ip()) {
                return Err(Error::PermissionDenied(format!(
                    "{host} resolves to {}, a non-public address not listed in [connectors] allowed_hosts",
                    a.ip()
                )));
            }
        }
        Ok((host, addrs))
    }
}

/// `url` without its query (which may carry an API key) for messages and logs.
pub(crate) fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    if u.query().is_some() {
        u.set_query(Some("…"));
    }
    let _ = u.set_password(None);
    u.to_string()
}

/// A response as the sync reads it.
#[derive(Debug)]
pub(crate) struct Response {
    pub url: url::Url,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a request failed for good (after its retries).
#[derive(Debug)]
pub(crate) struct Failed {
    pub url: String,
    pub status: Option<u16>,
    pub error: Error,
}

/// What one request costs besides its answer, added to the run's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Spent {
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: Duration,
}

/// The retry and wait rules of one connector.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub max_attempts: u32,
    pub statuses: Vec<u16>,
    pub base: Duration,
    pub cap: Duration,
    pub max_rate_limited: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// The HTTP side of one run: pinned clients per host, the rate limiter, the rules.
pub(crate) struct Session<'a> {
    egress: &'a Egress,
    rules: Rules,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    connector: &'a str,
    /// Time spent waiting on 429s in this run (bounded by `max_rate_limited`).
    waited_429: Mutex<Duration>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connector", &self.connector)
            .finish()
    }
}

const MAX_REDIRECTS: usize = 5;

impl<'a> Session<'a> {
    pub(crate) fn new(
        egress: &'a Egress,
        connector: &'a str,
        rules: Rules,
        limiter: Option<governor::DefaultDirectRateLimiter>,
    ) -> Session<'a> {
        Session {
            egress,
            rules,
            limiter,
            clients: Mutex::new(HashMap::new()),
            connector,
            waited_429: Mutex::new(Duration::ZERO),
        }
    }

    async fn client(&self, url: &url::Url) -> Result<reqwest::Client> {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        if let Ok(c) = self.clients.lock()
            && let Some(c) = c.get(&key)
        {
            return Ok(c.clone());
        }
        let (host, addrs) = self.egress.check(url).await?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .resolve_to_addrs(&host, &addrs)
            .timeout(self.rules.timeout)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("building an HTTP client: {e}")))?;
        if let Ok(mut c) = self.clients.lock() {
            c.insert(key, client.clone());
        }
        Ok(client)
    }

    /// Sends `build(url)` (following redirects that stay allowed), retrying and waiting
    /// as the rules say. `build` gets each hop's URL and whether it is still the first
    /// host (credentials go only there).
    pub(crate) async fn send(
        &self,
        url: url::Url,
        method: http::Method,
        headers: &HeaderMap,
        form: Option<&[(String, String)]>,
        spent: &mut Spent,
    ) -> std::result::Result<Response, Failed> {
        let m = crate::telemetry::metrics();
        let shown = redact(&url);
        let fail = |status: Option<u16>, error: Error| Failed {
            url: shown.clone(),
            status,
            error,
        };
        let mut attempt = 1u32;
        loop {
            if let Some(l) = &self.limiter {
                let start = Instant::now();
                l.until_ready().await;
                spent.rate_limited += start.elapsed();
            }
            spent.requests += 1;
            let outcome = self.once(&url, &method, headers, form).await;
            let (status, retry_after) = match outcome {
                Ok(r) => {
                    m.connector_request(self.connector, "ok");
                    return Ok(r);
                }
                Err(Attempt::Refused(e)) => {
                    m.connector_request(self.connector, "refused");
                    return Err(fail(None, e));
                }
                Err(Attempt::Status(s, retry_after)) => (Some(s), retry_after),
                Err(Attempt::Transport(e)) => {
                    m.connector_request(self.connector, "error");
                    if attempt >= self.rules.max_attempts {
                        return Err(fail(
                            None,
                            Error::Unavailable(format!("{shown}: {e} (after {attempt} attempts)")),
                        ));
                    }
                    (None, None)
                }
            };
            if let Some(s) = status {
                m.connector_request(self.connector, status_class(s));
            }
            if status == Some(429) {
                // Waits as told; not an attempt.
                let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
                let total = {
                    let mut w = self.waited_429.lock().map_err(|_| {
                        fail(Some(429), Error::internal("rate-limit clock poisoned"))
                    })?;
                    *w += wait;
                    *w
                };
                if total > self.rules.max_rate_limited {
                    return Err(fail(
                        Some(429),
                        Error::ResourceExhausted(format!(
                            "{shown}: still rate limited (429) after waiting {} s in this run (retry.max_rate_limited_secs)",
                            (total - wait).as_secs()
                        )),
                    ));
                }
                m.connector_rate_limited(self.connector, wait);
                spent.rate_limited += wait;
                tokio::time::sleep(wait).await;
                continue;
            }
            let retryable = status.is_none_or(|s| self.rules.statuses.contains(&s));
            if !retryable || attempt >= self.rules.max_attempts {
                let s = status.unwrap_or_default();
                let why = if retryable {
                    format!("{shown}: HTTP {s} after {attempt} attempts")
                } else {
                    format!("{shown}: HTTP {s} (not retried: not in retry.statuses)")
                };
                return Err(fail(status, Error::Unavailable(why)));
            }
            let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
            spent.retries += 1;
            m.connector_retry(self.connector);
            tracing::debug!(connector = self.connector, url = %shown, ?status, attempt, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Jittered exponential backoff before attempt `attempt + 1` ("full jitter" over the
    /// upper half, so waits never collapse to zero).
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .rules
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let cap = exp.min(self.rules.cap);
        cap.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    async fn once(
        &self,
        first: &url::Url,
        method: &http::Method,
        headers: &HeaderMap,
        form: Option<&[(String, String)]>,
    ) -> std::result::Result<Response, Attempt> {
        let mut url = first.clone();
        for _ in 0..=MAX_REDIRECTS {
            let client = self.client(&url).await.map_err(Attempt::Refused)?;
            let same_origin = url.origin() == first.origin();
            let mut req = client.request(method.clone(), url.clone());
            // Credentials (headers and the first URL's query) go to the first origin only.
            if same_origin {
                req = req.headers(headers.clone());
            }
            if let Some(form) = form {
                req = req.form(form);
            }
            let resp = req.send().await.map_err(|e| {
                Attempt::Transport(if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    // Without the URL: reqwest's message repeats it, query and all.
                    e.without_url().to_string()
                })
            })?;
            let status = resp.status();
            if status.is_redirection() {
                let next = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| {
                        Attempt::Refused(Error::invalid(format!(
                            "{}: HTTP {status} without a usable Location",
                            redact(&url)
                        )))
                    })?;
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(Attempt::Status(status.as_u16(), retry_after(&resp)));
            }
            let headers = resp.headers().clone();
            let body = read_capped(resp, self.rules.max_bytes, &url).await?;
            return Ok(Response { url, headers, body });
        }
        Err(Attempt::Refused(Error::invalid(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            redact(first)
        ))))
    }
}

fn status_class(s: u16) -> &'static str {
    match s {
        429 => "429",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

enum Attempt {
    /// Not sent or not to be retried (host refused, redirect off the list, too large).
    Refused(Error),
    /// An answer that is not a success, with its Retry-After.
    Status(u16, Option<Duration>),
    /// No answer (connection, timeout).
    Transport(String),
}

/// Reads the body, failing once it passes `max` bytes (the declared length is checked
/// first, but not trusted).
async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
    url: &url::Url,
) -> std::result::Result<Bytes, Attempt> {
    let too_large = || {
        Attempt::Refused(Error::PayloadTooLarge(format!(
            "{}: the response is over max_response_bytes ({max})",
            redact(url)
        )))
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Attempt::Transport(e.without_url().to_string()))?
    {
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// How long a 429 or 503 asks to wait: `Retry-After` (seconds or an HTTP date), else the
/// rate-limit reset headers (`RateLimit-Reset`, `X-RateLimit-Reset`: seconds, or a Unix
/// time when it is one). At most an hour.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    if !matches!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    let h = resp.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let now = std::time::SystemTime::now();
    let wait = if let Some(v) = text("retry-after") {
        match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => httpdate::parse_http_date(v)
                .ok()
                .map(|t| t.duration_since(now).unwrap_or_default()),
        }
    } else {
        ["ratelimit-reset", "x-ratelimit-reset"]
            .iter()
            .find_map(|n| text(n))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|n| {
                if n > 1_000_000_000 {
                    let at = std::time::UNIX_EPOCH + Duration::from_secs(n);
                    at.duration_since(now).unwrap_or_default()
                } else {
                    Duration::from_secs(n)
                }
            })
    };
    wait.map(|w| w.min(Duration::from_secs(3600)))
}

/// The `rel="next"` target of a `Link` header (RFC 8288), resolved against `base`.
pub(crate) fn next_link(headers: &HeaderMap, base: &url::Url) -> Option<url::Url> {
    for value in headers.get_all(http::header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        for part in text.split(',') {
            let mut pieces = part.split(';');
            let Some(target) = pieces.next().map(str::trim) else {
                continue;
            };
            let Some(target) = target.strip_prefix('<').and_then(|t| t.strip_suffix('>')) else {
                continue;
            };
            let next = pieces.any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=").is_some_and(|r| {
                    r.trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if next {
                return base.join(target).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_mapped_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_allow_list_names_hosts_and_addresses() {
        let e = Egress::new(
            &[
                "api.example.com".into(),
                "*.corp.example".into(),
                "127.0.0.1".into(),
            ],
            false,
        );
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(e.check(&url("http://127.0.0.1:9/x")).await.is_ok());
        let refused = e.check(&url("http://127.0.0.2/x")).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("not in [connectors] allowed_hosts")
        );
        assert!(e.check(&url("http://evil.com/")).await.is_err());
        assert!(
            e.check(&url("http://[::ffff:127.0.0.1]:9/")).await.is_ok(),
            "mapped loopback is listed 127.0.0.1"
        );
        assert!(e.check(&url("file:///etc/passwd")).await.is_err());
        assert!(e.listed_name("a.corp.example") && !e.listed_name("corp.example"));
        assert!(!e.listed_name("xcorp.example"));
        // `localhost` is not listed by name, and even when it is, its address is not public.
        let named = Egress::new(&["localhost".into()], false);
        let e = named.check(&url("http://localhost:9/")).await.unwrap_err();
        assert!(e.to_string().contains("non-public address"), "{e}");
        let none = Egress::new(&[], false)
            .check(&url("http://8.8.8.8/"))
            .await
            .unwrap_err();
        assert!(
            none.to_string().contains("allowed_hosts is empty"),
            "{none}"
        );
        let dev = Egress::new(&[], true);
        assert!(dev.check(&url("http://8.8.8.8/")).await.is_ok());
        assert!(dev.check(&url("http://127.0.0.1/")).await.is_err());
    }

    #[test]
    fn next_links_follow_rfc_8288() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::LINK,
            r#"<https://a.example/x?page=1>; rel="prev", </items?page=3>; rel="next""#
                .parse()
                .unwrap(),
        );
        let base = url::Url::parse("https://a.example/items?page=2").unwrap();
        assert_eq!(
            next_link(&h, &base).unwrap().as_str(),
            "https://a.example/items?page=3"
        );
        assert!(next_link(&HeaderMap::new(), &base).is_none());
    }
}
