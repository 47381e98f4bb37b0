//! A fake Africa's Talking SMS API speaking the real wire format (as
//! /work/shared/conformance/fake_at.py does): `POST /version1/messaging`, form-urlencoded
//! `username`, `to`, `message`, optional `from`, an `apiKey` header; 401 with a plain-text
//! body for bad credentials; 201 with `SMSMessageData` JSON (when asked with `Accept:
//! application/json`). Records every request with the time it arrived. Tests can make it
//! fail the next N requests for a number, hold its answers, or reject a number (statusCode
//! 403 InvalidPhoneNumber).
#![allow(dead_code)]

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const API_KEY: &str = "at-test-key";
pub const USERNAME: &str = "sandbox";

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Names in lower case.
    pub headers: HashMap<String, String>,
    pub form: HashMap<String, String>,
    pub status: u16,
    /// The messageId given to an accepted recipient.
    pub message_id: Option<String>,
}

impl Recorded {
    pub fn to(&self) -> &str {
        self.form.get("to").map(String::as_str).unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// number -> (requests left to fail, HTTP status)
    fail: HashMap<String, (u32, u16)>,
    invalid: HashSet<String>,
    delay: Option<Duration>,
}

pub struct FakeAt {
    pub url: String,
    state: Arc<Mutex<State>>,
    server: Option<(actix_web::dev::ServerHandle, JoinHandle<()>)>,
}

impl FakeAt {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::new(shared);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .default_service(web::to(handle))
                })
                .workers(2)
                .disable_signals()
                .bind("127.0.0.1:0")
                .expect("bind the fake AT server");
                let addr = server.addrs()[0];
                let server = server.run();
                let _ = tx.send((addr, server.handle()));
                let _ = server.await;
            })
        });
        let (addr, handle) = rx.await.expect("the fake AT server starts");
        Self {
            url: format!("http://{addr}"),
            state,
            server: Some((handle, thread)),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Messaging requests for `number`, oldest first.
    pub fn requests_to(&self, number: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/version1/messaging" && r.to() == number)
            .collect()
    }

    /// Answers the next `count` requests for `number` with HTTP `status`.
    pub fn fail_next(&self, number: &str, count: u32, status: u16) {
        self.state
            .lock()
            .unwrap()
            .fail
            .insert(number.to_string(), (count, status));
    }

    pub fn reject_number(&self, number: &str) {
        self.state
            .lock()
            .unwrap()
            .invalid
            .insert(number.to_string());
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = Some(delay);
    }
}

impl Drop for FakeAt {
    fn drop(&mut self) {
        if let Some((handle, thread)) = self.server.take() {
            drop(handle.stop(false));
            let _ = thread.join();
        }
    }
}

async fn handle(
    state: web::Data<Arc<Mutex<State>>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let is_form = headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let form: HashMap<String, String> = if is_form {
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        HashMap::new()
    };
    let mut rec = Recorded {
        at: Instant::now(),
        method: req.method().to_string(),
        path: req.path().to_string(),
        headers,
        form,
        status: 0,
        message_id: None,
    };
    let (response, delay) = {
        let mut st = state.lock().unwrap();
        let response = decide(&mut st, &mut rec);
        st.requests.push(rec);
        (response, st.delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    response
}

fn plain(status: u16, text: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("text/plain; charset=utf-8")
        .body(text.to_string())
}

fn decide(st: &mut State, rec: &mut Recorded) -> HttpResponse {
    let to = rec.to().to_string();
    if let Some((left, status)) = st.fail.get_mut(&to)
        && *left > 0
    {
        *left -= 1;
        rec.status = *status;
        return plain(*status, "Internal Server Error");
    }
    if rec.method != "POST" || rec.path != "/version1/messaging" {
        rec.status = 404;
        return plain(404, "Not Found");
    }
    if rec.headers.get("apikey").map(String::as_str) != Some(API_KEY)
        || rec.form.get("username").map(String::as_str) != Some(USERNAME)
    {
        rec.status = 401;
        return plain(401, "The supplied authentication is invalid");
    }
    for name in ["to", "message"] {
        if rec.form.get(name).is_none_or(|v| v.is_empty()) {
            rec.status = 400;
            return plain(400, &format!("Must have {name} in your request"));
        }
    }
    let recipient = if st.invalid.contains(&to) {
        serde_json::json!({"statusCode": 403, "number": to, "status": "InvalidPhoneNumber",
            "cost": "0", "messageId": "None"})
    } else {
        let id = format!("ATXid_{}", uuid::Uuid::now_v7().simple());
        rec.message_id = Some(id.clone());
        serde_json::json!({"statusCode": 101, "number": to, "status": "Success",
            "cost": "KES 0.8000", "messageId": id})
    };
    let sent = usize::from(rec.message_id.is_some());
    let body = serde_json::json!({"SMSMessageData": {
        "Message": format!("Sent to {sent}/1 Total Cost: KES {:.4}", sent as f64 * 0.8),
        "Recipients": [recipient]}});
    rec.status = 201;
    if rec
        .headers
        .get("accept")
        .is_some_and(|a| a.contains("application/json"))
    {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Created()
            .content_type("application/xml")
            .body("<AfricasTalkingResponse/>")
    }
}
