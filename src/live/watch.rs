//! `duka watch`: a small live subscriber that prints one line per event and resumes with
//! `?since=` when the connection drops.

use crate::config::Settings;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The server's base URL, `http://host:port`.
    pub url: String,
    pub token: String,
    pub since: Option<i64>,
    pub types: Option<String>,
    /// Print the frames as they come (one JSON object per line).
    pub json: bool,
}

impl WatchOptions {
    /// The URL from `--url` or `http.bind`, the token from `--token`, `DUKA_TOKEN`, the first
    /// of `auth.tokens` or the generated token file.
    pub fn resolve(
        settings: &Settings,
        url: Option<String>,
        token: Option<String>,
    ) -> Result<(String, String), String> {
        let url = match url {
            Some(url) => url,
            None => {
                let bind = settings.bind_addr().map_err(|e| e.to_string())?;
                let host = match bind.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
                    ip if ip.is_unspecified() => "[::1]".to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                };
                format!("http://{host}:{}", bind.port())
            }
        };
        let token = token
            .or_else(|| std::env::var("DUKA_TOKEN").ok().filter(|t| !t.is_empty()))
            .or_else(|| settings.auth.tokens.first().map(|t| t.token().to_string()))
            .or_else(|| {
                std::fs::read_to_string(crate::auth::token::token_file(&settings.data_dir))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            })
            .ok_or_else(|| {
                "no API token: pass --token, set DUKA_TOKEN, or run where the server's \
                 data directory (or auth.tokens) is"
                    .to_string()
            })?;
        Ok((url, token))
    }

    fn ws_url(&self, since: Option<i64>) -> Result<String, String> {
        let mut url = url::Url::parse(&self.url).map_err(|e| format!("--url: {e}"))?;
        let scheme = match url.scheme() {
            "http" | "ws" => "ws",
            "https" | "wss" => "wss",
            other => return Err(format!("--url: unsupported scheme {other:?}")),
        };
        url.set_scheme(scheme)
            .map_err(|_| "--url: cannot use this URL".to_string())?;
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/api/v1/ws"));
        {
            let mut query = url.query_pairs_mut();
            query.clear();
            if let Some(since) = since {
                query.append_pair("since", &since.to_string());
            }
            if let Some(types) = &self.types {
                query.append_pair("types", types);
            }
        }
        Ok(url.to_string().trim_end_matches('?').to_string())
    }
}

/// Why watching stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The server refused the subscription (bad credentials, bad parameters): retrying
    /// would not help.
    #[error("{0}")]
    Refused(String),
    /// The first connection never succeeded: most likely a wrong URL or a server that is
    /// not running, which retrying for ever would hide.
    #[error("gave up after {attempts} attempts to connect: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("{0}")]
    Other(String),
}

/// Attempts at the first connection before giving up (about 8 s with the backoff).
pub const FIRST_CONNECT_ATTEMPTS: u32 = 5;

/// Watches until the server refuses or `out` fails; reconnects (resuming after the last
/// seen `seq`) when an established connection drops, for as long as it takes. A first
/// connection that fails `FIRST_CONNECT_ATTEMPTS` times in a row ends the watch.
pub async fn run(opts: WatchOptions, out: &mut impl Write) -> Result<(), WatchError> {
    let mut since = opts.since;
    let mut backoff = Duration::from_millis(500);
    let mut connected_once = false;
    let mut failures = 0;
    loop {
        let mut connected = false;
        match session(&opts, &mut since, &mut connected, out).await {
            Ok(reason) => tracing::warn!("{reason}; reconnecting"),
            Err(WatchError::Other(e)) => {
                if !connected_once && !connected {
                    failures += 1;
                    if failures >= FIRST_CONNECT_ATTEMPTS {
                        return Err(WatchError::GaveUp {
                            attempts: failures,
                            last: e,
                        });
                    }
                }
                tracing::warn!("{e}; reconnecting");
            }
            Err(stop) => return Err(stop),
        }
        if connected {
            connected_once = true;
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// TLS for `wss://` (`--url https://...`): the system's trusted roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured), or Mozilla's when the system has none, as in a slim image.
fn tls_connector() -> Result<tokio_tungstenite::Connector, WatchError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // One unreadable certificate in the system store is no reason to refuse the rest.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    // The provider is named: the dependency tree may carry more than one.
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WatchError::Refused(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
        config,
    )))
}

/// One connection: prints frames until it ends, keeping `since` at the last event seen.
async fn session(
    opts: &WatchOptions,
    since: &mut Option<i64>,
    connected: &mut bool,
    out: &mut impl Write,
) -> Result<String, WatchError> {
    let url = opts.ws_url(*since).map_err(WatchError::Refused)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| WatchError::Refused(format!("--url: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", opts.token))
        .map_err(|_| WatchError::Refused("the token is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", bearer);
    let connector = if url.starts_with("wss:") {
        tls_connector()?
    } else {
        tokio_tungstenite::Connector::Plain
    };
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector));
    let (mut socket, _) = match connecting.await {
        Ok(pair) => {
            *connected = true;
            pair
        }
        Err(WsError::Http(response)) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_string))
                .unwrap_or(body);
            let message = format!("the server answered {status}: {detail}");
            return if status.is_client_error() {
                Err(WatchError::Refused(message))
            } else {
                Err(WatchError::Other(message))
            };
        }
        Err(e) => {
            return Err(WatchError::Other(format!(
                "cannot connect to {}: {e}",
                opts.url
            )));
        }
    };
    let write_failed = |e: std::io::Error| WatchError::Refused(format!("cannot print: {e}"));
    while let Some(message) = socket.next().await {
        let message = message.map_err(|e| WatchError::Other(format!("connection lost: {e}")))?;
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| WatchError::Other(format!("unreadable frame: {e}")))?;
                let kind = frame["type"].as_str().unwrap_or_default();
                let seq = frame["seq"].as_i64();
                match (kind, seq) {
                    ("hello", Some(latest)) => {
                        since.get_or_insert(latest);
                    }
                    ("resync", Some(latest)) => *since = Some(latest),
                    (_, Some(seq)) => *since = Some(seq),
                    _ => {}
                }
                let line = if opts.json {
                    text.as_str().to_string()
                } else {
                    describe(&frame)
                };
                writeln!(out, "{line}").map_err(write_failed)?;
                out.flush().map_err(write_failed)?;
            }
            Message::Close(frame) => {
                let _ = socket.close(None).await;
                return Ok(match frame {
                    Some(f) => format!(
                        "the server closed the connection ({}: {})",
                        f.code, f.reason
                    ),
                    None => "the server closed the connection".into(),
                });
            }
            Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_) => {}
        }
    }
    let _ = socket.flush().await;
    Ok("the connection ended".into())
}

/// One human-readable line for a frame.
pub fn describe(frame: &Value) -> String {
    let kind = frame["type"].as_str().unwrap_or("?");
    let seq = frame["seq"].as_i64().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    match kind {
        "hello" => return format!("connected (latest seq {seq})"),
        "resync" => {
            return format!("resync: events before seq {seq} are gone; reload through the API");
        }
        _ => {}
    }
    let data = &frame["data"];
    let summary = match kind {
        "order.created" | "order.updated" => format!(
            "{} {} {} x {} {} {} for {}",
            text(&data["order_number"]),
            text(&data["status"]),
            data["quantity"],
            text(&data["item"]),
            text(&data["currency"]),
            text(&data["amount"]),
            text(&data["customer"]["name"]),
        ),
        "customer.created" | "customer.updated" => format!(
            "{} {} {}",
            text(&data["code"]),
            text(&data["name"]),
            text(&data["phone"])
        ),
        "notification.updated" => format!(
            "{} order {} {}",
            text(&data["id"]),
            text(&data["order_id"]),
            text(&data["status"])
        ),
        _ => text(&data["id"]),
    };
    format!("{seq:>8} {} {kind:<20} {summary}", text(&frame["at"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_carry_since_and_types_but_never_the_token() {
        let opts = WatchOptions {
            url: "http://127.0.0.1:8080".into(),
            token: "secret-token".into(),
            since: None,
            types: Some("order.created".into()),
            json: false,
        };
        assert_eq!(
            opts.ws_url(Some(5)).unwrap(),
            "ws://127.0.0.1:8080/api/v1/ws?since=5&types=order.created"
        );
        let plain = WatchOptions {
            types: None,
            ..opts
        };
        assert_eq!(plain.ws_url(None).unwrap(), "ws://127.0.0.1:8080/api/v1/ws");
        assert!(!plain.ws_url(Some(1)).unwrap().contains("secret"));
    }

    #[test]
    fn lines_name_the_event() {
        let line = describe(&json!({"type": "order.deleted", "seq": 3,
            "at": "2026-11-21T09:30:00.123Z", "data": {"id": "abc"}}));
        assert!(line.contains("order.deleted") && line.contains("abc") && line.contains('3'));
        assert_eq!(
            describe(&json!({"type": "hello", "seq": 9})),
            "connected (latest seq 9)"
        );
    }
}
