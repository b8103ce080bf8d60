//! The admin console (PLATFORM P7): the single-page app whose sources are in `console/`,
//! built ahead into `console/dist/` (committed, so `cargo build` needs no Node), embedded
//! in the binary and served under `[console] path` on the REST port.
//!
//! Its files need no token and hold no data: every screen calls the public REST API with
//! the user's token, so grants, row filters and masks apply to it as to any client. This
//! module only answers for files: which path names which file, with which headers.
//! Hashed assets (`assets/*-<hash>.*`) are immutable; `index.html` is revalidated on every
//! load (ETag, 304). An extensionless path under the prefix is a route of the app and gets
//! `index.html`; anything with `..`, an encoded separator or an unknown file is not found.

use std::collections::HashMap;
use std::io::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use rust_embed::RustEmbed;
use sha2::{Digest, Sha256};

use crate::config::ConsoleConfig;
use crate::error::{Error, Result};

#[derive(RustEmbed)]
#[folder = "console/dist/"]
struct Dist;

/// The headers every answer of the console carries (the app loads nothing from elsewhere,
/// runs no inline script or style, and is never framed).
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; \
         frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// One file as served: its bytes (and gzipped, when that is smaller), type and tag.
#[derive(Debug)]
struct File {
    body: Bytes,
    gzip: Option<Bytes>,
    mime: String,
    etag: String,
    /// Named by its content's hash: cached for a year, never revalidated.
    immutable: bool,
}

impl File {
    fn new(name: &str, mime: &str, body: Vec<u8>) -> Result<File> {
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
        let gzip = {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(&body)
                .and_then(|()| enc.finish())
                .map_err(|e| Error::internal(format!("gzip of console file {name}: {e}")))?
        };
        let mime = match mime {
            "text/html" | "text/css" | "text/javascript" | "application/javascript" => {
                format!("{mime}; charset=utf-8")
            }
            _ => mime.to_string(),
        };
        Ok(File {
            gzip: (gzip.len() < body.len()).then(|| Bytes::from(gzip)),
            body: Bytes::from(body),
            mime,
            etag,
            immutable: name.starts_with("assets/"),
        })
    }
}

/// The embedded console, ready to answer.
#[derive(Debug)]
pub struct Console {
    prefix: String,
    files: HashMap<String, File>,
    index: File,
}

/// What a path under the prefix names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// The prefix itself: redirected to `prefix/`.
    Root,
    File(&'a str),
    /// A route of the app: `index.html`.
    App,
}

impl Console {
    /// The console under `cfg.path`, its `index.html` told its base and whether the server
    /// runs in dev auth (the sign-in screen then says where the printed token is).
    pub fn new(cfg: &ConsoleConfig, dev_auth: bool) -> Result<Console> {
        let mut files = HashMap::new();
        let mut index = None;
        for name in Dist::iter() {
            let Some(file) = Dist::get(&name) else {
                continue;
            };
            let mime = file.metadata.mimetype().to_string();
            let body = file.data.into_owned();
            if name == "index.html" {
                index = Some(body);
            } else {
                files.insert(name.to_string(), File::new(&name, &mime, body)?);
            }
        }
        let index = index.ok_or_else(|| {
            Error::internal("the console's build (console/dist) has no index.html")
        })?;
        let html = String::from_utf8(index)
            .map_err(|_| Error::internal("console/dist/index.html is not UTF-8"))?;
        let head = html
            .find("<head>")
            .ok_or_else(|| Error::internal("console/dist/index.html has no <head>"))?
            + "<head>".len();
        // The prefix is checked at configuration (letters, digits, -, _ and /): nothing in
        // it needs escaping in an attribute.
        let injected = format!(
            "{}\n    <base href=\"{}/\" />\n    <meta name=\"strata-auth\" content=\"{}\" />{}",
            &html[..head],
            cfg.path,
            if dev_auth { "dev" } else { "jwt" },
            &html[head..]
        );
        Ok(Console {
            prefix: cfg.path.clone(),
            index: File::new("index.html", "text/html", injected.into_bytes())?,
            files,
        })
    }

    /// Where it is served (`/console`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What the raw (still percent-encoded) path below the prefix names, if anything.
    fn target<'a>(&self, rest: &'a str) -> Option<Target<'a>> {
        if rest.is_empty() {
            return Some(Target::Root);
        }
        let rest = rest.strip_prefix('/')?;
        let lower = rest.to_ascii_lowercase();
        // Encoded separators and dots, NULs and backslashes never name anything here.
        if ["%2f", "%5c", "%2e", "%00", "\\"]
            .iter()
            .any(|bad| lower.contains(bad))
        {
            return None;
        }
        let trimmed = rest.strip_suffix('/').unwrap_or(rest);
        if !trimmed.is_empty()
            && trimmed
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return None;
        }
        if trimmed.is_empty() || trimmed == "index.html" {
            return Some(Target::App);
        }
        if self.files.contains_key(trimmed) {
            return Some(Target::File(trimmed));
        }
        let last = trimmed.rsplit('/').next().unwrap_or(trimmed);
        // A name with an extension that is not one of the app's files: not found (never
        // the app, so a missing script is a 404, not HTML parsed as JavaScript).
        if last.contains('.') {
            return None;
        }
        Some(Target::App)
    }

    /// The answer for `path` (the request's path, from the prefix on) and the request's
    /// headers: a file, `index.html` for a route of the app, a redirect from the bare
    /// prefix, or not found.
    pub fn answer(&self, path: &str, headers: &HeaderMap) -> Result<Response<Bytes>> {
        let not_found = || Error::NotFound(format!("no console file at {path}"));
        let rest = path.strip_prefix(&self.prefix).ok_or_else(not_found)?;
        let file = match self.target(rest).ok_or_else(not_found)? {
            Target::Root => {
                let mut r = Response::new(Bytes::new());
                *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
                r.headers_mut().insert(
                    header::LOCATION,
                    HeaderValue::from_str(&format!("{}/", self.prefix))
                        .map_err(|e| Error::internal(format!("console redirect: {e}")))?,
                );
                return Ok(r);
            }
            Target::File(name) => self.files.get(name).ok_or_else(not_found)?,
            Target::App => &self.index,
        };
        let gzip = file.gzip.as_ref().filter(|_| accepts_gzip(headers));
        let etag = match gzip {
            Some(_) => format!("{}-gz\"", file.etag.trim_end_matches('"')),
            None => file.etag.clone(),
        };
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches_etag(v, &etag));
        let mut r = Response::new(if fresh {
            Bytes::new()
        } else {
            gzip.cloned().unwrap_or_else(|| file.body.clone())
        });
        if fresh {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
        }
        let h = r.headers_mut();
        let value = |s: &str| {
            HeaderValue::from_str(s).map_err(|e| Error::internal(format!("console header: {e}")))
        };
        h.insert(header::ETAG, value(&etag)?);
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if file.immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            }),
        );
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if !fresh {
            h.insert(header::CONTENT_TYPE, value(&file.mime)?);
            if gzip.is_some() {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
        }
        Ok(r)
    }

    /// The bytes the browser downloads for the app (every file, gzipped where it is
    /// served so): what the 500 KB budget is about.
    pub fn payload_gzip_bytes(&self) -> usize {
        self.files
            .values()
            .chain(std::iter::once(&self.index))
            .map(|f| f.gzip.as_ref().map_or(f.body.len(), Bytes::len))
            .sum()
    }
}

/// Whether `Accept-Encoding` takes gzip (with a non-zero weight).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero
        })
}

/// `If-None-Match` (a list of tags, weak or strong, or `*`) against `etag`.
fn matches_etag(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> Console {
        Console::new(&ConsoleConfig::default(), true).unwrap()
    }

    #[test]
    fn paths_name_files_routes_or_nothing() {
        let c = console();
        let asset = c.files.keys().find(|k| k.ends_with(".js")).unwrap().clone();
        assert_eq!(c.target(""), Some(Target::Root));
        assert_eq!(c.target("/"), Some(Target::App));
        assert_eq!(c.target("/index.html"), Some(Target::App));
        assert_eq!(c.target("/catalog/gold/sales"), Some(Target::App));
        assert_eq!(c.target("/sql/"), Some(Target::App));
        assert_eq!(c.target(&format!("/{asset}")), Some(Target::File(&asset)));
        for bad in [
            "/..",
            "/../etc/passwd",
            "/assets/../index.html",
            "/..%2f..%2fetc/passwd",
            "/%2e%2e/x",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "//x",
            "/a//b",
            "/./x",
            "/assets/missing.js",
            "/favicon.ico",
            "/x.php",
            "nope",
        ] {
            assert_eq!(c.target(bad), None, "{bad}");
        }
    }

    #[test]
    fn index_knows_its_base_and_auth_mode() {
        let c = Console::new(
            &ConsoleConfig {
                enabled: true,
                path: "/admin/ui".into(),
            },
            false,
        )
        .unwrap();
        let html = std::str::from_utf8(&c.index.body).unwrap();
        assert!(html.contains("<base href=\"/admin/ui/\" />"), "{html}");
        assert!(html.contains("content=\"jwt\""), "{html}");
    }

    #[test]
    fn accept_encoding_and_if_none_match_parse() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(accepts_gzip(&h("gzip, deflate, br")));
        assert!(accepts_gzip(&h("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("br")));
        assert!(matches_etag("\"a\", W/\"b\"", "\"b\""));
        assert!(matches_etag("*", "\"b\""));
        assert!(!matches_etag("\"a\"", "\"b\""));
    }
}
