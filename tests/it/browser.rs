//! Debian's headless Chromium driven over WebDriver (chromedriver + fantoccini), for the
//! console's tests. Chromium and chromedriver come from apt (browsers cannot be downloaded
//! here): [`ensure_chromium`] installs them on first use, as the test command must.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs Debian's `chromium` and `chromium-driver` unless both are there (a file lock
/// serializes the install across test processes). As root, or through `sudo -n`.
pub fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let lock = std::fs::File::create(base.join("strata-chromium.lock")).unwrap();
    lock.lock().unwrap();
    if !(Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()) {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let apt = |args: &[&str]| {
            let mut c = if root {
                Command::new("apt-get")
            } else {
                let mut c = Command::new("sudo");
                c.args(["-n", "apt-get"]);
                c
            };
            c.env("DEBIAN_FRONTEND", "noninteractive")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("apt-get {args:?}: {e}"))
        };
        let install = [
            "install",
            "-y",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ];
        let mut out = apt(&install);
        if !out.status.success() {
            // A fresh machine's package lists may be stale or missing.
            let update = apt(&["update"]);
            assert!(
                update.status.success(),
                "apt-get update failed: {}",
                String::from_utf8_lossy(&update.stderr)
            );
            out = apt(&install);
        }
        assert!(
            out.status.success(),
            "installing chromium and chromium-driver failed (root or passwordless sudo needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    lock.unlock().unwrap();
}

/// A headless Chromium session; chromedriver is killed on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    name: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share a process group of their own:
        // killing the group leaves no browser behind, even after a panic.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// A fresh browser (its own profile) for the test `name` (screenshots are named by it).
    pub async fn start(name: &str) -> Browser {
        ensure_chromium();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--metrics-recording-only",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            // Plain HTTP to chromedriver on loopback: no TLS stack to choose.
            let http = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(http)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("target/console-screenshots");
                    std::fs::create_dir_all(&shots).unwrap();
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                        shots,
                        name: name.to_string(),
                    };
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver never answered: {last:?}");
    }

    /// Saves a PNG of the page as `target/console-screenshots/<test>-<what>.png`.
    pub async fn shot(&self, what: &str) -> PathBuf {
        let path = self.shots.join(format!("{}-{what}.png", self.name));
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(&path, png);
        }
        path
    }

    /// Opens `url` and signs in with `token` on the sign-in screen, as a user would.
    pub async fn sign_in(&self, console: &str, token: &str) {
        self.client.goto(console).await.unwrap();
        let field = self.wait(Locator::Css("#token")).await;
        field.send_keys(token).await.unwrap();
        self.click("form button[type=submit]").await;
        self.wait(Locator::Css("nav[aria-label=Screens]")).await;
    }

    /// What `script` (a function body) returns, run in the page now.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Clicks the element `css` names (there now).
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// The element `at`, once it is there (20 s).
    pub async fn wait(&self, at: Locator<'_>) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(at)
            .await
            .unwrap_or_else(|e| panic!("no element {at:?}: {e}"))
    }

    /// Waits until `js` (a function body returning a value) returns something truthy.
    pub async fn until(&self, what: &str, js: &str) -> serde_json::Value {
        for _ in 0..200 {
            let v = self.js(js).await;
            let truthy = match &v {
                serde_json::Value::Null => false,
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never: {what}");
    }

    /// Runs `body` (the browser's last use), saves a screenshot of how it ended (and says
    /// where on a panic), and closes the browser.
    pub async fn guard<F: std::future::Future<Output = ()>>(&self, body: F) {
        use futures::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
        let path = self
            .shot(if outcome.is_ok() { "end" } else { "failure" })
            .await;
        // Ends the WebDriver session: chromedriver closes the browser.
        let _ = self.client.clone().close().await;
        if let Err(panic) = outcome {
            eprintln!("screenshot of the failure: {}", path.display());
            std::panic::resume_unwind(panic);
        }
    }
}
