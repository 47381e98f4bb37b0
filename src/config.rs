//! Settings: built-in defaults (documented key by key in `config.toml`), then one TOML file,
//! then `DUKA__SECTION__KEY` environment variables.

use crate::auth::role::Role;
use crate::domain::notification::{NotifyOn, Template};
use crate::domain::phone::Region;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `Debug` redacts secrets (see `redacted`), so settings may be logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where generated secrets (the API token, the session key) are kept.
    pub data_dir: PathBuf,
    pub http: Http,
    pub database: Database,
    pub auth: Auth,
    pub orders: Orders,
    pub business: Business,
    pub sms: Sms,
    pub live: Live,
    pub audit: Audit,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Days an order's history (its events, with who made each change) is kept, whatever
    /// `live.retention_days` (the replay window of `?since=`) is.
    pub retention_days: u32,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            retention_days: 365,
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub bind: String,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    pub rate_limit: RateLimit,
    /// Origins (`https://shop.example`) whose pages may call the API cross-origin.
    pub cors_allowed_origins: Vec<String>,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For/-Proto/-Host` are believed.
    pub trusted_proxies: Vec<String>,
    /// Seconds a client may take to send a request body.
    pub body_timeout_secs: u64,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub enabled: bool,
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    pub url: String,
    pub migrate_on_start: bool,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Token,
    Oidc,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub mode: AuthMode,
    pub tokens: Vec<TokenEntry>,
    /// Secret that signs session cookies; empty: generated once into `data_dir`.
    pub session_key: String,
    pub session_ttl_hours: u32,
    pub oidc: Oidc,
}

/// An entry of `auth.tokens`: a string (an admin token), or a table naming the token's role
/// and the principal's name.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenEntry {
    Admin(String),
    Named(NamedToken),
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    pub token: String,
    /// `viewer`, `staff` or `admin` (checked by `Settings::validate`).
    #[serde(default)]
    pub role: String,
    /// Default "API token N".
    #[serde(default)]
    pub name: Option<String>,
}

/// A configured token as the authenticator uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub token: String,
    pub role: Role,
    pub name: String,
}

impl From<&str> for TokenEntry {
    fn from(token: &str) -> Self {
        Self::Admin(token.to_string())
    }
}

impl TokenEntry {
    pub fn token(&self) -> &str {
        match self {
            Self::Admin(token) => token,
            Self::Named(named) => &named.token,
        }
    }
}

impl Auth {
    /// The configured tokens with their roles and names (the `i`th is "API token i+1"
    /// unless named); `Err` names the entry whose role is not one of the three.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>, ConfigError> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let default_name = format!("API token {}", i + 1);
                Ok(match entry {
                    TokenEntry::Admin(token) => ApiToken {
                        token: token.clone(),
                        role: Role::Admin,
                        name: default_name,
                    },
                    TokenEntry::Named(named) => ApiToken {
                        token: named.token.clone(),
                        role: Role::parse(&named.role).ok_or_else(|| {
                            key_error(
                                &format!("auth.tokens[{i}].role"),
                                format!(
                                    "{:?} is not a role: give viewer, staff or admin",
                                    named.role
                                ),
                            )
                        })?,
                        name: named
                            .name
                            .clone()
                            .filter(|n| !n.trim().is_empty())
                            .unwrap_or(default_name),
                    },
                })
            })
            .collect()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oidc {
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_url: String,
    /// The `aud` bearer tokens must carry; empty: the client id.
    pub audience: String,
    pub scopes: Vec<String>,
    pub allowed_domains: Vec<String>,
    pub allowed_emails: Vec<String>,
    /// With both allow lists empty, the server starts only when this says that every
    /// account of the issuer may sign in.
    pub allow_any_account: bool,
    /// The role of whoever may sign in, unless a list or the role claim names a higher one.
    pub default_role: Role,
    /// Verified e-mail addresses (any case) that are `staff`.
    pub staff: Vec<String>,
    /// Verified e-mail addresses (any case) that are `admin`.
    pub admins: Vec<String>,
    /// A claim (string or array) that may name `viewer`, `staff` or `admin`; empty: none.
    pub role_claim: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Orders {
    pub default_currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Business {
    /// IANA time zone whose calendar days the stats and the date filters use.
    pub timezone: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsProviderKind {
    Log,
    Africastalking,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sms {
    pub enabled: bool,
    pub provider: SmsProviderKind,
    pub rate_per_second: u32,
    pub burst: u32,
    pub per_recipient_per_minute: u32,
    pub max_attempts: u32,
    pub request_timeout_secs: u64,
    /// First retry delay; doubled per attempt (with jitter) up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// The SMS sender lease: one instance sends at a time, renewing its lease every
    /// quarter of this; when it stops, another instance takes over (with the messages it
    /// was sending) this long after its last renewal. A restarted instance takes over its
    /// own lease at once.
    pub lease_secs: u64,
    /// Messages handed to the provider at the same time.
    pub concurrency: u32,
    pub default_region: String,
    pub notify_on: Vec<NotifyOn>,
    pub templates: Templates,
    pub africastalking: AfricasTalking,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Templates {
    pub created: String,
    pub confirmed: String,
    pub shipped: String,
    pub delivered: String,
    pub cancelled: String,
}

impl Templates {
    pub fn get(&self, on: NotifyOn) -> &str {
        match on {
            NotifyOn::Created => &self.created,
            NotifyOn::Confirmed => &self.confirmed,
            NotifyOn::Shipped => &self.shipped,
            NotifyOn::Delivered => &self.delivered,
            NotifyOn::Cancelled => &self.cancelled,
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AfricasTalking {
    pub username: String,
    pub api_key: String,
    pub sender_id: String,
    pub base_url: String,
    pub webhook_secret: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Live {
    pub retention_days: u32,
    /// Frames queued for one client and not yet handed to its socket; over this the client
    /// is closed with 1013.
    pub max_buffered_frames: usize,
    /// The same in bytes (of the frames' text): over it the client is closed with 1013.
    pub max_buffered_bytes: usize,
    /// Recent events kept in memory so that most resumes need no database query.
    pub recent_events: usize,
    pub ping_interval_secs: u64,
    /// `/readyz` answers 503 while the live feed is behind the database's event log for
    /// longer than this.
    pub max_lag_secs: u64,
    pub idle_timeout_secs: u64,
    /// Open WebSockets in all (on this instance); beyond it the upgrade gets 429.
    pub max_connections: usize,
    /// Open WebSockets of one principal (on this instance); beyond it the upgrade gets 429.
    pub max_connections_per_principal: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `duka=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            http: Http::default(),
            database: Database::default(),
            auth: Auth::default(),
            orders: Orders::default(),
            business: Business::default(),
            sms: Sms::default(),
            live: Live::default(),
            audit: Audit::default(),
            log: Log::default(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            rate_limit: RateLimit::default(),
            cors_allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            body_timeout_secs: 10,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 50,
            burst: 100,
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self {
            url: "sqlite://data/duka.db?mode=rwc".into(),
            migrate_on_start: true,
            max_connections: 10,
            acquire_timeout_secs: 3,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            mode: AuthMode::Token,
            tokens: Vec::new(),
            session_key: String::new(),
            session_ttl_hours: 168,
            oidc: Oidc::default(),
        }
    }
}

impl Default for Oidc {
    fn default() -> Self {
        Self {
            issuer_url: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            redirect_url: String::new(),
            audience: String::new(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            allowed_domains: Vec::new(),
            allowed_emails: Vec::new(),
            allow_any_account: false,
            default_role: Role::Viewer,
            staff: Vec::new(),
            admins: Vec::new(),
            role_claim: String::new(),
        }
    }
}

impl Default for Orders {
    fn default() -> Self {
        Self {
            default_currency: "KES".into(),
        }
    }
}

impl Default for Business {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
        }
    }
}

impl Default for Sms {
    fn default() -> Self {
        Self {
            enabled: true,
            provider: SmsProviderKind::Log,
            rate_per_second: 10,
            burst: 20,
            per_recipient_per_minute: 5,
            max_attempts: 8,
            request_timeout_secs: 10,
            retry_base_ms: 2000,
            retry_max_ms: 300_000,
            lease_secs: 10,
            concurrency: 8,
            default_region: "KE".into(),
            notify_on: vec![NotifyOn::Created],
            templates: Templates::default(),
            africastalking: AfricasTalking::default(),
        }
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            created: "Hi {customer_name}, we have your order {order_number}: {quantity} x {item}, {currency} {amount}. Thank you!".into(),
            confirmed: "Hi {customer_name}, your order {order_number} ({item}) is confirmed.".into(),
            shipped: "Hi {customer_name}, your order {order_number} ({item}) is on its way.".into(),
            delivered: "Hi {customer_name}, your order {order_number} ({item}) has been delivered. Thank you!".into(),
            cancelled: "Hi {customer_name}, your order {order_number} ({item}) has been cancelled.".into(),
        }
    }
}

impl Default for AfricasTalking {
    fn default() -> Self {
        Self {
            username: "sandbox".into(),
            api_key: String::new(),
            sender_id: String::new(),
            base_url: "https://api.sandbox.africastalking.com".into(),
            webhook_secret: String::new(),
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Self {
            retention_days: 7,
            max_buffered_frames: 4096,
            max_buffered_bytes: 256 * 1024,
            recent_events: 1024,
            ping_interval_secs: 15,
            max_lag_secs: 10,
            idle_timeout_secs: 45,
            max_connections: 10_000,
            max_connections_per_principal: 200,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Every settings struct prints through serde with its secrets redacted, so that no part
/// of the settings can leak a secret through `{:?}`.
fn fmt_redacted<T: Serialize>(
    name: &str,
    value: &T,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    match serde_json::to_value(value) {
        Ok(mut value) => {
            redact(None, &mut value);
            write!(f, "{name} {value}")
        }
        Err(_) => write!(f, "{name} {{ .. }}"),
    }
}

macro_rules! redacted_debug {
    ($($ty:ident),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                fmt_redacted(stringify!($ty), self, f)
            }
        }
    )*};
}

redacted_debug!(
    Settings,
    Http,
    RateLimit,
    Database,
    Auth,
    Oidc,
    Orders,
    Sms,
    Templates,
    AfricasTalking,
    Live,
    Log
);

/// Words that mark a key as holding a secret (`auth.tokens`, `sms.africastalking.api_key`,
/// `webhook_secret`, and whatever secret keys come later: `client_secret`, `session_key`...).
const SECRET_WORDS: [&str; 4] = ["token", "secret", "key", "password"];

fn redact(key: Option<&str>, value: &mut serde_json::Value) {
    use serde_json::Value;
    let secret = key.is_some_and(|k| SECRET_WORDS.iter().any(|w| k.contains(w)));
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact(Some(k), v);
            }
        }
        Value::Array(items) => {
            for v in items {
                redact(key, v);
            }
        }
        Value::String(s) if secret && !s.is_empty() => *s = "[redacted]".into(),
        Value::String(s) => {
            if let Some(shown) = redact_url(s) {
                *s = shown;
            }
        }
        _ => {}
    }
}

/// `a/./b/../c` as `a/c`, without touching the filesystem (the directories may not exist
/// yet, and a symlinked state directory should be shown as configured).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A URL with its secrets (password, secret query values) replaced by `redacted`, for logs
/// and messages.
pub fn without_password(text: &str) -> String {
    redact_url(text).unwrap_or_else(|| text.to_string())
}

/// A URL with its secrets hidden: the password (`postgres://user:pass@host/db`) and query
/// values whose names mark a secret (`?password=`, `?sslpassword=`, `?token=`); `None` when
/// there is nothing to hide.
fn redact_url(text: &str) -> Option<String> {
    let mut url = url::Url::parse(text).ok()?;
    let mut changed = false;
    if url.password().is_some() && url.set_password(Some("redacted")).is_ok() {
        changed = true;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| lower.contains(w)) && !v.is_empty() {
                    changed = true;
                    (k.into_owned(), "redacted".to_string())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        if changed {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    changed.then(|| url.to_string())
}

/// A configuration problem, named by its key, e.g. `http.bind: invalid address "x"`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn key_error(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {message}"))
}

/// The directory systemd made for the service (`StateDirectory=`), when it says so.
fn state_directory() -> Option<PathBuf> {
    let value = std::env::var_os("STATE_DIRECTORY")?;
    // Several directories come colon-separated; the first is the service's own.
    let first = value.to_str().map_or_else(
        || PathBuf::from(&value),
        |v| PathBuf::from(v.split(':').next().unwrap_or_default()),
    );
    (first.is_absolute()).then_some(first)
}

/// What the settings are made of: the defaults, then `file` (or `./config.toml` when
/// present), then the environment; and the (absolute) file used, if any.
fn figment(file: Option<&Path>) -> Result<(Figment, Option<PathBuf>), ConfigError> {
    let mut defaults = Settings::default();
    if state_directory().is_some() {
        // Under systemd the state directory itself holds the data and the database
        // (relative paths from the defaults and the environment resolve against it).
        defaults.data_dir = PathBuf::from(".");
        defaults.database.url = "sqlite://duka.db?mode=rwc".into();
    }
    let mut figment = Figment::from(Serialized::defaults(defaults));
    let file = match file {
        Some(path) if !path.is_file() => {
            return Err(ConfigError(format!(
                "config file {} not found",
                path.display()
            )));
        }
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from("config.toml")).filter(|p| p.is_file()),
    };
    let file = match file {
        // Absolute, so that the file's own directory is known for its relative paths.
        Some(path) => Some(
            std::fs::canonicalize(&path)
                .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    Ok((figment.merge(Env::prefixed("DUKA__").split("__")), file))
}

/// The log settings alone, for reporting a configuration error in the configured format
/// when the rest of the settings are wrong; the defaults when even they cannot be read.
pub fn log_settings(file: Option<&Path>) -> Log {
    figment(file)
        .ok()
        .and_then(|(f, _)| f.extract_inner::<Log>("log").ok())
        .unwrap_or_default()
}

/// The file of a `sqlite:` URL (`sqlite://data/duka.db?mode=rwc`), if it names one.
fn sqlite_file(url: &str) -> Option<(PathBuf, Option<&str>)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    Some((PathBuf::from(decoded.as_ref()), query))
}

/// The characters that would end or change the path part of a `sqlite:` URL.
const SQLITE_PATH: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'%').add(b'?').add(b'#');

impl Settings {
    /// Loads the defaults, then `file` (or `./config.toml` when present), then the
    /// environment. A relative `data_dir` or SQLite path is relative to the directory of
    /// the config file that set it; one from the defaults or the environment is relative
    /// to `$STATE_DIRECTORY` (systemd) when set, else to the config file's directory, else
    /// (no file at all) to the working directory. The result holds absolute paths: the
    /// same settings find the same files wherever the process starts.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let (figment, file) = figment(file)?;
        let mut settings = Self::from_figment(figment.clone())?;
        let fallback = match (state_directory(), file.as_deref().and_then(Path::parent)) {
            (Some(state), _) => state,
            (None, Some(dir)) => dir.to_path_buf(),
            (None, None) => std::env::current_dir()
                .map_err(|e| ConfigError(format!("cannot read the working directory: {e}")))?,
        };
        let base = |key: &str| match figment.find_metadata(key).and_then(|m| m.source.as_ref()) {
            Some(figment::Source::File(file)) => file
                .parent()
                .map_or_else(|| fallback.clone(), Path::to_path_buf),
            _ => fallback.clone(),
        };
        settings.data_dir = normalize(&base("data_dir").join(&settings.data_dir));
        if let Some((path, query)) = sqlite_file(&settings.database.url) {
            let path = normalize(&base("database.url").join(path));
            let path = path
                .to_str()
                .ok_or_else(|| key_error("database.url", "the SQLite path must be valid UTF-8"))?;
            let path = percent_encoding::utf8_percent_encode(path, SQLITE_PATH);
            settings.database.url = match query {
                Some(query) => format!("sqlite://{path}?{query}"),
                None => format!("sqlite://{path}"),
            };
        }
        Ok(settings)
    }

    /// The SQLite database file, when the database is one.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        sqlite_file(&self.database.url).map(|(path, _)| path)
    }

    /// The settings as TOML (what `duka config check` prints), with every secret replaced
    /// by `[redacted]` (see `redact`).
    pub fn redacted_toml(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        redact(None, &mut value);
        toml::to_string(&value).unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(|e| {
            let e = e.into_iter().next().map(|e| {
                let key = e.path.join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| format!(" (from {})", m.name))
                    .unwrap_or_default();
                if key.is_empty() {
                    format!("{}{source}", e.kind)
                } else {
                    format!("{key}: {}{source}", e.kind)
                }
            });
            ConfigError(e.unwrap_or_else(|| "invalid configuration".into()))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot say, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        let url = &self.database.url;
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => {}
            Some("postgres" | "postgresql") => {
                url::Url::parse(url).map_err(|e| {
                    key_error("database.url", format!("malformed PostgreSQL URL: {e}"))
                })?;
            }
            _ => {
                return Err(key_error(
                    "database.url",
                    "must start with sqlite:// or postgres://",
                ));
            }
        }
        if self.database.max_connections == 0 {
            return Err(key_error("database.max_connections", "must be at least 1"));
        }
        if self.database.acquire_timeout_secs == 0 {
            return Err(key_error(
                "database.acquire_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.http.rate_limit.enabled
            && (self.http.rate_limit.per_second == 0 || self.http.rate_limit.burst == 0)
        {
            return Err(key_error(
                "http.rate_limit",
                "per_second and burst must be at least 1 (or set enabled = false)",
            ));
        }
        for (i, origin) in self.http.cors_allowed_origins.iter().enumerate() {
            let parsed = url::Url::parse(origin).ok();
            let is_origin = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.origin().ascii_serialization() == *origin
            });
            if !is_origin {
                return Err(key_error(
                    &format!("http.cors_allowed_origins[{i}]"),
                    format!("{origin:?} is not an origin such as https://shop.example"),
                ));
            }
        }
        for (i, proxy) in self.http.trusted_proxies.iter().enumerate() {
            parse_proxy(proxy).map_err(|e| key_error(&format!("http.trusted_proxies[{i}]"), e))?;
        }
        if self.http.body_timeout_secs == 0 {
            return Err(key_error("http.body_timeout_secs", "must be at least 1"));
        }
        self.auth.api_tokens()?;
        for (i, token) in self.auth.tokens.iter().map(TokenEntry::token).enumerate() {
            if token.len() < 8 || token.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(key_error(
                    &format!("auth.tokens[{i}]"),
                    "must be at least 8 visible ASCII characters",
                ));
            }
        }
        if !self.auth.session_key.is_empty() && self.auth.session_key.len() < 32 {
            return Err(key_error(
                "auth.session_key",
                "must be at least 32 characters (or empty to generate one)",
            ));
        }
        if self.auth.session_ttl_hours == 0 {
            return Err(key_error("auth.session_ttl_hours", "must be at least 1"));
        }
        if self.auth.mode == AuthMode::Oidc {
            self.validate_oidc()?;
        }
        crate::domain::money::Currency::parse(&self.orders.default_currency)
            .map_err(|e| key_error("orders.default_currency", e))?;
        self.business
            .timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                key_error(
                    "business.timezone",
                    format!(
                        "{:?} is not an IANA time zone such as \"Africa/Nairobi\" or \"UTC\"",
                        self.business.timezone
                    ),
                )
            })?;
        Region::parse(&self.sms.default_region).map_err(|e| key_error("sms.default_region", e))?;
        for on in [
            NotifyOn::Created,
            NotifyOn::Confirmed,
            NotifyOn::Shipped,
            NotifyOn::Delivered,
            NotifyOn::Cancelled,
        ] {
            let key = format!(
                "sms.templates.{}",
                serde_json::to_value(on)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("")
            );
            Template::parse(self.sms.templates.get(on)).map_err(|e| key_error(&key, e))?;
        }
        let positive = [
            ("sms.rate_per_second", self.sms.rate_per_second),
            ("sms.burst", self.sms.burst),
            (
                "sms.per_recipient_per_minute",
                self.sms.per_recipient_per_minute,
            ),
            ("sms.max_attempts", self.sms.max_attempts),
            ("sms.concurrency", self.sms.concurrency),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(key_error(key, "must be at least 1"));
            }
        }
        if self.sms.request_timeout_secs == 0 {
            return Err(key_error("sms.request_timeout_secs", "must be at least 1"));
        }
        if self.sms.retry_base_ms == 0 {
            return Err(key_error("sms.retry_base_ms", "must be at least 1"));
        }
        if self.sms.retry_max_ms < self.sms.retry_base_ms {
            return Err(key_error(
                "sms.retry_max_ms",
                "must be at least sms.retry_base_ms",
            ));
        }
        // Renewed every quarter of it: below 2 s a renewal barely has time to answer.
        if self.sms.lease_secs < 2 {
            return Err(key_error(
                "sms.lease_secs",
                "must be at least 2 (the SMS sender renews its lease every quarter of it)",
            ));
        }
        if self.sms.enabled && self.sms.provider == SmsProviderKind::Africastalking {
            let at = &self.sms.africastalking;
            let base = url::Url::parse(&at.base_url)
                .map_err(|e| key_error("sms.africastalking.base_url", e))?;
            if !https_or_loopback(&base) {
                return Err(key_error(
                    "sms.africastalking.base_url",
                    "must be an https:// URL (plain http only to a loopback address)",
                ));
            }
            if at.api_key.is_empty() {
                return Err(key_error(
                    "sms.africastalking.api_key",
                    "is required when sms.provider = \"africastalking\"",
                ));
            }
            if at.username.is_empty() {
                return Err(key_error(
                    "sms.africastalking.username",
                    "is required when sms.provider = \"africastalking\"",
                ));
            }
        }
        if self.live.max_connections == 0 || self.live.max_connections_per_principal == 0 {
            return Err(key_error(
                "live.max_connections",
                "max_connections and max_connections_per_principal must be at least 1",
            ));
        }
        if self.live.retention_days == 0 {
            return Err(key_error("live.retention_days", "must be at least 1"));
        }
        if self.audit.retention_days == 0 {
            return Err(key_error("audit.retention_days", "must be at least 1"));
        }
        if self.live.max_buffered_frames == 0 {
            return Err(key_error("live.max_buffered_frames", "must be at least 1"));
        }
        if self.live.max_buffered_bytes < 4096 {
            return Err(key_error(
                "live.max_buffered_bytes",
                "must be at least 4096 (bytes of queued frames)",
            ));
        }
        if self.live.max_lag_secs == 0 {
            return Err(key_error("live.max_lag_secs", "must be at least 1"));
        }
        if self.live.ping_interval_secs == 0 {
            return Err(key_error("live.ping_interval_secs", "must be at least 1"));
        }
        if self.live.idle_timeout_secs <= self.live.ping_interval_secs {
            return Err(key_error(
                "live.idle_timeout_secs",
                "must be longer than live.ping_interval_secs",
            ));
        }
        Ok(())
    }

    fn validate_oidc(&self) -> Result<(), ConfigError> {
        let o = &self.auth.oidc;
        let required = "is required when auth.mode = \"oidc\"";
        let issuer = url::Url::parse(&o.issuer_url).map_err(|e| {
            key_error(
                "auth.oidc.issuer_url",
                if o.issuer_url.is_empty() {
                    required.to_string()
                } else {
                    e.to_string()
                },
            )
        })?;
        if !https_or_loopback(&issuer) || issuer.query().is_some() {
            return Err(key_error(
                "auth.oidc.issuer_url",
                "must be an https:// URL without a query, e.g. https://accounts.google.com \
                 (plain http only to a loopback address)",
            ));
        }
        if o.client_id.is_empty() {
            return Err(key_error("auth.oidc.client_id", required));
        }
        // Without a secret and a callback, only API tokens (and POST /auth/session) work:
        // what issuers without browser sign-in, such as Firebase, offer.
        if !o.redirect_url.is_empty() {
            let redirect = url::Url::parse(&o.redirect_url)
                .map_err(|e| key_error("auth.oidc.redirect_url", e))?;
            if !matches!(redirect.scheme(), "https" | "http") || redirect.path() != "/auth/callback"
            {
                return Err(key_error(
                    "auth.oidc.redirect_url",
                    "must be this server's /auth/callback URL, e.g. https://duka.example.com/auth/callback",
                ));
            }
            if o.client_secret.is_empty() {
                return Err(key_error(
                    "auth.oidc.client_secret",
                    "is required for browser sign-in (when auth.oidc.redirect_url is set)",
                ));
            }
        }
        if !o.scopes.iter().any(|s| s == "openid") {
            return Err(key_error("auth.oidc.scopes", "must include \"openid\""));
        }
        for (i, d) in o.allowed_domains.iter().enumerate() {
            if d.is_empty() || d.contains('@') || d.trim() != d {
                return Err(key_error(
                    &format!("auth.oidc.allowed_domains[{i}]"),
                    "must be a domain such as example.com",
                ));
            }
        }
        for (i, e) in o.allowed_emails.iter().enumerate() {
            if !e.contains('@') || e.trim() != e {
                return Err(key_error(
                    &format!("auth.oidc.allowed_emails[{i}]"),
                    "must be an email address",
                ));
            }
        }
        // Without a list, every account of the issuer (every Google account, every user of
        // an Auth0 tenant) could sign in: that must be said, not assumed.
        if o.allowed_domains.is_empty() && o.allowed_emails.is_empty() && !o.allow_any_account {
            return Err(key_error(
                "auth.oidc.allow_any_account",
                "auth.oidc.allowed_domains and allowed_emails are both empty: list who may \
                 sign in, or set allow_any_account = true to let every account of the issuer in",
            ));
        }
        Ok(())
    }

    /// Settings that work but weaken the service; `serve` logs each at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.auth.mode == AuthMode::Token {
            for (i, token) in self.auth.tokens.iter().map(TokenEntry::token).enumerate() {
                if token.len() < 16 {
                    warnings.push(format!(
                        "auth.tokens[{i}] is shorter than 16 characters: easy to guess"
                    ));
                }
            }
        }
        let secret = &self.sms.africastalking.webhook_secret;
        if !secret.is_empty() && secret.chars().count() < 32 {
            warnings.push(
                "sms.africastalking.webhook_secret is shorter than 32 characters: easy to guess"
                    .into(),
            );
        }
        warnings
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http.bind.parse().map_err(|_| {
            key_error(
                "http.bind",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8080",
                    self.http.bind
                ),
            )
        })
    }

    pub fn region(&self) -> Region {
        Region::parse(&self.sms.default_region).unwrap_or_else(|_| {
            Region::parse("KE").expect("KE is a region in libphonenumber's metadata")
        })
    }

    /// `business.timezone` (UTC when invalid, which `validate` refuses).
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.business.timezone.parse().unwrap_or(chrono_tz::Tz::UTC)
    }

    pub fn template(&self, on: NotifyOn) -> Template {
        Template::parse(self.sms.templates.get(on))
            .unwrap_or_else(|_| Template::parse("{order_number}").expect("a valid template"))
    }
}

/// An address (`10.0.0.1`) or a CIDR range (`10.0.0.0/8`).
pub fn parse_proxy(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or CIDR range such as 10.0.0.0/8"))
}

/// https, or plain http to this machine (a local test issuer or provider fake).
fn https_or_loopback(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_figment(
            Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(text)),
        )
    }

    #[test]
    fn the_documented_config_toml_is_exactly_the_defaults() {
        let text = include_str!("../config.toml");
        assert_eq!(from_toml(text).unwrap(), Settings::default());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut s = Settings::default();
        s.auth.tokens = vec!["tok-visible-nowhere".into()];
        s.sms.africastalking.api_key = "atsk_visible_nowhere".into();
        s.sms.africastalking.webhook_secret = "hook-visible-nowhere".into();
        s.database.url = "postgres://duka:pw-visible-nowhere@db.example/duka".into();
        s.auth.session_key = "key-visible-nowhere-key-visible-nowhere".into();
        s.auth.oidc.client_secret = "cs-visible-nowhere".into();
        let shown = format!("{s:?}");
        let parts = format!(
            "{:?} {:?} {:?} {:?}",
            s.auth, s.auth.oidc, s.sms.africastalking, s.database
        );
        assert!(!parts.contains("visible"), "{parts}");
        let db = Database {
            url: "postgres://db.example/duka?user=duka&password=pw-visible-nowhere".into(),
            ..Database::default()
        };
        let url = format!("{db:?}");
        assert!(
            !url.contains("visible") && url.contains("user=duka"),
            "{url}"
        );
        assert!(
            !shown.contains("visible-nowhere") && !shown.contains("visible_nowhere"),
            "{shown}"
        );
        assert!(
            shown.contains("db.example") && shown.contains("[redacted]"),
            "{shown}"
        );
    }

    #[test]
    fn sqlite_paths_are_read_from_urls_and_normalized() {
        assert_eq!(
            sqlite_file("sqlite://data/duka.db?mode=rwc"),
            Some((PathBuf::from("data/duka.db"), Some("mode=rwc")))
        );
        assert_eq!(
            sqlite_file("sqlite:///var/lib/a%20b.db"),
            Some((PathBuf::from("/var/lib/a b.db"), None))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
        assert_eq!(
            normalize(Path::new("/etc/duka/./../duka/state")),
            PathBuf::from("/etc/duka/state")
        );
        let mut s = Settings::default();
        s.database.url = format!(
            "sqlite://{}?mode=rwc",
            percent_encoding::utf8_percent_encode("/tmp/50%?#.db", SQLITE_PATH)
        );
        assert_eq!(s.sqlite_path(), Some(PathBuf::from("/tmp/50%?#.db")));
    }

    #[test]
    fn config_check_output_is_toml_without_secrets() {
        let mut s = Settings::default();
        s.auth.session_key = "k-visible-nowhere-0123456789abcdef0123".into();
        s.sms.africastalking.api_key = "atsk_visible_nowhere".into();
        let shown = s.redacted_toml();
        assert!(!shown.contains("visible"), "{shown}");
        let back: toml::Table = shown.parse().unwrap();
        assert_eq!(back["auth"]["session_key"].as_str(), Some("[redacted]"));
        assert_eq!(back["http"]["bind"].as_str(), Some("127.0.0.1:8080"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = from_toml("[http]\nbindd = \"x\"").unwrap_err().to_string();
        assert!(err.contains("bindd"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = from_toml("[http]\nbind = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("http.bind:"), "{err}");
        let err = from_toml("[database]\nurl = \"mysql://x\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("database.url:"), "{err}");
        let err = from_toml("[sms.templates]\ncreated = \"Hi {name}\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sms.templates.created:"), "{err}");
        let err = from_toml("[sms]\nlease_secs = 1").unwrap_err().to_string();
        assert!(err.starts_with("sms.lease_secs:"), "{err}");
        // The sender lease is not tied to the provider's timeout.
        from_toml("[sms]\nlease_secs = 2\nrequest_timeout_secs = 30").unwrap();
        let err = from_toml("[sms]\nretry_base_ms = 500\nretry_max_ms = 100")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sms.retry_max_ms:"), "{err}");
        let err = from_toml("[business]\ntimezone = \"Africa/Nairobbi\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("business.timezone:"), "{err}");
        let ok = from_toml("[business]\ntimezone = \"Africa/Nairobi\"").unwrap();
        assert_eq!(ok.timezone(), chrono_tz::Tz::Africa__Nairobi);
        let err = from_toml("[sms]\nconcurrency = 0").unwrap_err().to_string();
        assert!(err.starts_with("sms.concurrency:"), "{err}");
        let err = from_toml("[sms]\nnotify_on = [\"teleported\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sms.notify_on"), "{err}");
    }

    #[test]
    fn oidc_keys_are_checked_and_named() {
        let base = "[auth]\nmode = \"oidc\"\n[auth.oidc]\n";
        let err = from_toml(base).unwrap_err().to_string();
        assert!(err.starts_with("auth.oidc.issuer_url:"), "{err}");
        let issuer = "issuer_url = \"https://accounts.google.com\"\n";
        let err = from_toml(&format!("{base}{issuer}"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("auth.oidc.client_id:"), "{err}");
        let client = "client_id = \"c\"\n";
        let err = from_toml(&format!("{base}{issuer}{client}"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("auth.oidc.allow_any_account:"), "{err}");
        let base = "[auth]\nmode = \"oidc\"\n[auth.oidc]\nallow_any_account = true\n";
        assert!(
            from_toml(&format!("{base}{issuer}{client}")).is_ok(),
            "API tokens only"
        );
        let err = from_toml(&format!(
            "{base}issuer_url = \"http://idp.example\"\n{client}"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("auth.oidc.issuer_url:"), "{err}");
        assert!(
            from_toml(&format!(
                "{base}issuer_url = \"http://127.0.0.1:9/\"\n{client}"
            ))
            .is_ok()
        );
        let err = from_toml(&format!(
            "{base}{issuer}{client}redirect_url = \"https://d.example/auth/callback\""
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("auth.oidc.client_secret:"), "{err}");
        let client = "client_id = \"c\"\nclient_secret = \"s\"\n";
        let err = from_toml(&format!(
            "{base}{issuer}{client}redirect_url = \"https://d.example/x\""
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("auth.oidc.redirect_url:"), "{err}");
        let redirect = "redirect_url = \"https://d.example/auth/callback\"\n";
        let ok = from_toml(&format!("{base}{issuer}{client}{redirect}")).unwrap();
        assert_eq!(ok.auth.mode, AuthMode::Oidc);
        let err = from_toml(&format!(
            "{base}{issuer}{client}{redirect}scopes = [\"email\"]"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("auth.oidc.scopes:"), "{err}");
        let err = from_toml(&format!(
            "{base}{issuer}{client}{redirect}allowed_domains = [\"a@b.c\"]"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("auth.oidc.allowed_domains[0]:"), "{err}");
        let err = from_toml("[auth]\nsession_key = \"short\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("auth.session_key:"), "{err}");
    }
}
