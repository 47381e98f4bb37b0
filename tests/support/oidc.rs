//! Test OIDC glue: a real OpenID provider (panva's oidc-provider, `tests/support/oidc/`) in a
//! node process on a random loopback port, duka configured against it, and a cookie-keeping
//! "browser" that signs in through the provider's own login and consent forms.
#![allow(dead_code)]

use crate::support::{TestApp, spawn_app_with};
use duka::config::{AuthMode, Settings};
use reqwest::redirect::Policy;
use reqwest::{Response, Url};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

pub const CLIENT_ID: &str = "duka";
pub const CLIENT_SECRET: &str = "duka-test-secret";
pub const AUDIENCE: &str = "duka-api";

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/oidc")
}

/// The provider process; killed when dropped (and it exits by itself when our end of its
/// stdin closes, e.g. if this test process dies).
pub struct Provider {
    pub issuer: String,
    child: Child,
    _stdin: ChildStdin,
    http: reqwest::Client,
}

impl Provider {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like `start`, with extra environment for the provider script (e.g. OIDC_BEARER_ONLY).
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = provider_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the test OpenID provider is not installed: run `npm ci` in {} (scripts/test does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // DUKA_TEST_PROVIDER_LOG=1 shows the provider's own log.
            .stderr(if std::env::var_os("DUKA_TEST_PROVIDER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("node runs (install Node.js 18 or later)");
        let stdin = child.stdin.take().expect("provider stdin");
        let stdout = child.stdout.take().expect("provider stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .expect("the provider's first line");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the provider did not start ({e}): {line:?}"));
        Self {
            issuer: ready["issuer"].as_str().expect("issuer").to_string(),
            child,
            _stdin: stdin,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn call(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.issuer);
        let request = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        let r = request.send().await.expect("provider test endpoint");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Claims of a valid API token for `sub`, to be changed by the test.
    pub fn claims(&self, sub: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": sub,
            "iat": now, "exp": now + 300,
            "email": format!("{sub}@example.com"), "email_verified": true, "name": format!("Test {sub}"),
        })
    }

    /// A JWT with `claims`, signed with `key` ("current", "stranger", "impostor", "provider")
    /// or made with `attack` ("hs256-public").
    pub async fn mint(&self, claims: &Value, key: &str) -> String {
        self.mint_raw(json!({ "claims": claims, "key": key })).await
    }

    pub async fn mint_raw(&self, body: Value) -> String {
        self.call("/test/mint", Some(body)).await["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A new signing key for minted tokens (the old one leaves the JWKS); its kid.
    pub async fn rotate(&self) -> String {
        self.call("/test/rotate", Some(json!({}))).await["kid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn jwks_fetches(&self) -> u64 {
        self.call("/test/stats", None).await["jwks"]
            .as_u64()
            .unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port, so that the redirect URL can be configured before duka starts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// duka in OIDC mode against `provider`.
pub async fn spawn_oidc_app(provider: &Provider, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let issuer = provider.issuer.clone();
    spawn_app_with(move |s| {
        let port = free_port();
        s.http.bind = format!("127.0.0.1:{port}");
        s.auth.mode = AuthMode::Oidc;
        s.auth.tokens.clear();
        s.auth.oidc.issuer_url = issuer;
        s.auth.oidc.client_id = CLIENT_ID.into();
        s.auth.oidc.client_secret = CLIENT_SECRET.into();
        s.auth.oidc.redirect_url = format!("http://127.0.0.1:{port}/auth/callback");
        s.auth.oidc.audience = AUDIENCE.into();
        // The tests' provider lets any login in; the tests that check the lists set them.
        s.auth.oidc.allow_any_account = true;
        configure(s);
    })
    .await
}

/// A browser: one cookie jar, and a client that follows redirects except into duka's
/// callback (so tests can look at, alter or replay it), and one that follows none.
pub struct Browser {
    pub jar: Arc<reqwest::cookie::Jar>,
    pub client: reqwest::Client,
    pub manual: reqwest::Client,
}

impl Browser {
    pub fn new() -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .no_proxy()
            .cookie_provider(jar.clone())
            .redirect(Policy::custom(|attempt| {
                if attempt.url().path() == "/auth/callback" || attempt.previous().len() > 10 {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .unwrap();
        let manual = reqwest::Client::builder()
            .no_proxy()
            .cookie_provider(jar.clone())
            .redirect(Policy::none())
            .build()
            .unwrap();
        Self {
            jar,
            client,
            manual,
        }
    }

    /// Starts at duka's /auth/login?next=..., signs in at the provider as `login` (filling
    /// the login and consent forms), and returns the callback URL the provider sent back.
    pub async fn sign_in_until_callback(&self, app: &TestApp, login: &str, next: &str) -> Url {
        let mut url = Url::parse(&format!("{}/auth/login", app.url)).unwrap();
        url.query_pairs_mut().append_pair("next", next);
        let mut r = self.client.get(url).send().await.expect("GET /auth/login");
        for _ in 0..5 {
            if let Some(callback) = callback_location(&r) {
                return callback;
            }
            let page = r.url().clone();
            let status = r.status();
            let html = r.text().await.unwrap();
            assert!(status.is_success(), "{page}: {status}: {html}");
            let (action, mut fields) =
                parse_form(&html).unwrap_or_else(|| panic!("no form on {page}: {html}"));
            if fields.iter().any(|(k, _)| k == "login") {
                fields.retain(|(k, _)| k != "login" && k != "password");
                fields.push(("login".into(), login.into()));
                fields.push(("password".into(), "any password".into()));
            }
            r = self
                .client
                .post(page.join(&action).unwrap())
                .form(&fields)
                .send()
                .await
                .expect("form POST");
        }
        panic!("the provider never sent the browser back to duka");
    }

    /// Signs in completely; returns duka's answer to the callback (a redirect to `next`).
    pub async fn sign_in(&self, app: &TestApp, login: &str, next: &str) -> Response {
        let callback = self.sign_in_until_callback(app, login, next).await;
        self.manual
            .get(callback)
            .send()
            .await
            .expect("GET callback")
    }

    /// The value of a cookie the browser holds for `app`.
    pub fn cookie(&self, app: &TestApp, name: &str) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let header = self
            .jar
            .cookies(&Url::parse(&format!("{}/", app.url)).unwrap())?;
        header.to_str().ok()?.split("; ").find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }
}

fn callback_location(r: &Response) -> Option<Url> {
    if !r.status().is_redirection() {
        return None;
    }
    let location = r.headers().get("location")?.to_str().ok()?;
    let url = r.url().join(location).ok()?;
    (url.path() == "/auth/callback").then_some(url)
}

/// The first form's action and its named inputs with their values.
fn parse_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let form_start = html.find("<form")?;
    let form = &html[form_start..html[form_start..].find("</form>")? + form_start];
    let action = attr(&form[..form.find('>')?], "action")?;
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(i) = rest.find("<input") {
        let tag = &rest[i..i + rest[i..].find('>')?];
        if let Some(name) = attr(tag, "name") {
            fields.push((name, attr(tag, "value").unwrap_or_default()));
        }
        rest = &rest[i + tag.len()..];
    }
    Some((action.replace("&amp;", "&"), fields))
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_string())
}

/// The `Set-Cookie` header that sets `name`, as sent.
pub fn set_cookie(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}
