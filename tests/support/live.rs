//! Live-event test support: an app whose hub the test can ask, and WebSocket helpers.

use super::{TestApp, TestDb, test_settings};
use duka::config::Settings;
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should come, before calling it lost.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct LiveApp {
    pub app: TestApp,
    pub live: duka::live::Live,
}

impl std::ops::Deref for LiveApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

pub async fn spawn_live_app() -> LiveApp {
    spawn_live_app_with(|_| {}).await
}

/// SMS is off unless `configure` turns it on, so that only the test's own writes publish
/// events (a sender publishes `notification.updated` as it works, at its own pace).
pub async fn spawn_live_app_with(configure: impl FnOnce(&mut Settings)) -> LiveApp {
    let db = TestDb::new();
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let mut settings = test_settings(&db, data_dir.path());
    settings.sms.enabled = false;
    configure(&mut settings);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server_settings = settings.clone();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match duka::build(server_settings).await {
                Ok(app) => {
                    let _ = tx.send(Ok((app.addr, app.handle(), app.live.clone())));
                    let _ = app.run().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let (addr, handle, live) = match rx.await.expect("the server thread answers") {
        Ok(started) => started,
        Err(e) => panic!("duka did not start: {e}"),
    };
    LiveApp {
        app: TestApp {
            addr,
            url: format!("http://{addr}"),
            settings,
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
            server: Some((handle, thread)),
            data_dir,
            db,
        },
        live,
    }
}

impl LiveApp {
    pub async fn subscribers(&self) -> usize {
        self.live.subscriber_count().await.expect("the hub answers")
    }

    /// Waits until the hub counts `n` subscribers.
    pub async fn await_subscribers(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.subscribers().await;
            if now == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hub still counts {now} subscribers, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn ws_url(app: &TestApp, query: &str) -> String {
    format!("ws://{}/api/v1/ws{query}", app.addr)
}

pub fn request(
    app: &TestApp,
    query: &str,
    token: Option<&str>,
) -> tungstenite::handshake::client::Request {
    request_at(app.addr, query, token)
}

/// The upgrade request to a server at `addr` (e.g. a `duka` process).
pub fn request_at(
    addr: std::net::SocketAddr,
    query: &str,
    token: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = format!("ws://{addr}/api/v1/ws{query}")
        .into_client_request()
        .expect("a WebSocket request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
        );
    }
    request
}

/// Connects with the test token; `query` is `""` or starts with `?`.
pub async fn connect(app: &TestApp, query: &str) -> Ws {
    try_connect(app, query, Some(super::TOKEN))
        .await
        .unwrap_or_else(|e| panic!("WebSocket connect {query:?}: {e}"))
}

pub async fn try_connect(
    app: &TestApp,
    query: &str,
    token: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    tokio_tungstenite::connect_async(request(app, query, token))
        .await
        .map(|(ws, _)| ws)
}

/// Connects through a socket with a tiny receive buffer, for a client that falls behind.
pub async fn connect_small_window(app: &TestApp, query: &str) -> Ws {
    connect_small_window_at(app.addr, query).await
}

/// The same, to a server at `addr`.
pub async fn connect_small_window_at(addr: std::net::SocketAddr, query: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("TCP connect");
    let (ws, _) = tokio_tungstenite::client_async(
        request_at(addr, query, Some(super::TOKEN)),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("WebSocket handshake");
    ws
}

/// What came next on a socket, pings and pongs aside.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    Closed(Option<CloseFrame>),
    /// The stream ended without a close frame: the error that ended it, if any.
    Ended(Option<String>),
}

pub async fn next(ws: &mut Ws) -> Next {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time");
        match message {
            None => return Next::Ended(None),
            Some(Err(e)) => return Next::Ended(Some(e.to_string())),
            Some(Ok(Message::Text(text))) => {
                return Next::Frame(serde_json::from_str(text.as_str()).expect("a JSON frame"));
            }
            Some(Ok(Message::Close(frame))) => return Next::Closed(frame),
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads what the server still sends on `ws`, to the end of the connection, without
/// answering anything (tungstenite would answer each ping, and a pong written after the
/// server closed ends the read with a broken pipe before the close frame is returned): the
/// close frame's code, if one came. For a client that stopped reading and comes back late.
pub async fn close_code_unanswered(ws: Ws) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let MaybeTlsStream::Plain(mut stream) = ws.into_inner() else {
        panic!("a plain TCP stream");
    };
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes)).await;
    read.expect("the server ends the connection in time")
        .expect("reading what the server sent");
    // Server frames are not masked: FIN|opcode, a length (7 bits, or 16 / 64 bits), payload.
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            127 => (
                usize::try_from(u64::from_be_bytes(
                    bytes[at + 2..at + 10].try_into().unwrap(),
                ))
                .unwrap(),
                10,
            ),
            n => (usize::from(n), 2),
        };
        let payload = &bytes[at + header..(at + header + len).min(bytes.len())];
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        at += header + len;
    }
    None
}

/// The next frame, which must be a JSON text frame.
pub async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Next::Frame(v) => v,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// The next `n` frames.
pub async fn next_n(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(next_json(ws).await);
    }
    frames
}

/// Reads the hello frame and returns its seq.
pub async fn hello(ws: &mut Ws) -> i64 {
    let frame = next_json(ws).await;
    assert_eq!(frame["type"], "hello", "{frame}");
    frame["seq"].as_i64().expect("hello has a seq")
}

/// Asserts `frames` are events with consecutive seq starting at `first`.
pub fn assert_consecutive(frames: &[Value], first: i64) {
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(
            frame["seq"].as_i64(),
            Some(first + i as i64),
            "frame {i} of {}: {frame}",
            frames.len()
        );
    }
}

pub fn seqs(frames: &[Value]) -> Vec<i64> {
    frames.iter().filter_map(|f| f["seq"].as_i64()).collect()
}
