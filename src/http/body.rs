//! Request bodies: JSON objects read field by field, so that every bad field is reported at
//! once, unknown fields are refused, and numbers keep their exact text (for money).

use super::problem::ApiError;
use crate::domain::FieldErrors;
use crate::domain::money::Money;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

pub const MAX_BODY: usize = 64 * 1024;

/// A JSON object body, its fields still raw.
pub struct JsonObject {
    fields: BTreeMap<String, Box<RawValue>>,
}

impl FromRequest for JsonObject {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == mime::APPLICATION
                    && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
            });
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if !json {
                return Err(ApiError::UnsupportedMediaType);
            }
            if declared_len.is_some_and(|n| n > MAX_BODY) {
                return Err(ApiError::PayloadTooLarge);
            }
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(read_error)?;
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ApiError::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Self::parse(&body)
        })
    }
}

impl JsonObject {
    /// One parse of the body; the canonical form is only built when a hash is asked for.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        match serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(body) {
            Ok(fields) => Ok(Self { fields }),
            // Valid JSON that is not an object gets its own message.
            Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => {
                Err(ApiError::BadRequest {
                    detail: "the body must be a JSON object".into(),
                    param: None,
                })
            }
            Err(e) => Err(ApiError::BadRequest {
                detail: format!("the body is not valid JSON: {e}"),
                param: None,
            }),
        }
    }

    /// SHA-256 of the body's canonical JSON (sorted keys, no spacing), so that key order
    /// and spacing do not make a repeated request look different.
    pub fn hash(&self) -> String {
        let canonical: BTreeMap<&str, serde_json::Value> = self
            .fields
            .iter()
            .map(|(k, v)| {
                let value = serde_json::from_str(v.get()).unwrap_or(serde_json::Value::Null);
                (k.as_str(), value)
            })
            .collect();
        let text = serde_json::to_string(&canonical).unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// Reads fields out of a `JsonObject`, collecting every error.
pub struct Form {
    fields: BTreeMap<String, Box<RawValue>>,
    errors: FieldErrors,
}

/// A JSON value converter: raw JSON to a domain value or a message.
pub type Conv<'a, T> = Box<dyn FnOnce(&RawValue) -> Result<T, String> + 'a>;

impl Form {
    pub fn new(body: JsonObject) -> Self {
        Self {
            fields: body.fields,
            errors: FieldErrors::default(),
        }
    }

    fn take(&mut self, name: &str) -> Option<Box<RawValue>> {
        self.fields.remove(name)
    }

    fn convert<T>(&mut self, name: &str, raw: &RawValue, conv: Conv<'_, T>) -> Option<T> {
        if raw.get() == "null" {
            self.errors.add(name, "must not be null");
            return None;
        }
        let result = conv(raw);
        self.errors.check(name, result)
    }

    /// A field that must be present and not null.
    pub fn required<T>(&mut self, name: &str, conv: Conv<'_, T>) -> Option<T> {
        match self.take(name) {
            None => {
                self.errors.add(name, "is required");
                None
            }
            Some(raw) => self.convert(name, &raw, conv),
        }
    }

    /// A field that may be absent, but not null.
    pub fn optional<T>(&mut self, name: &str, conv: Conv<'_, T>) -> Option<T> {
        let raw = self.take(name)?;
        self.convert(name, &raw, conv)
    }

    /// A field that may be absent (`None`) or null (`Some(None)`).
    pub fn nullable<T>(&mut self, name: &str, conv: Conv<'_, T>) -> Option<Option<T>> {
        let raw = self.take(name)?;
        if raw.get() == "null" {
            return Some(None);
        }
        self.convert(name, &raw, conv).map(Some)
    }

    pub fn has_error(&self, name: &str) -> bool {
        self.errors.0.contains_key(name)
    }

    pub fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors.add(name, message);
    }

    /// Ends reading: unknown fields are errors too.
    pub fn finish(mut self) -> Result<(), ApiError> {
        for name in std::mem::take(&mut self.fields).into_keys() {
            self.errors.add(name, "unknown field");
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// A JSON string, then `parse`. U+0000 is refused before `parse` sees it: PostgreSQL
/// cannot store it, and no field has a use for it.
pub fn text<'a, T>(parse: impl FnOnce(&str) -> Result<T, String> + 'a) -> Conv<'a, T> {
    Box::new(move |raw| {
        let s: String =
            serde_json::from_str(raw.get()).map_err(|_| "must be a string".to_string())?;
        if s.contains('\0') {
            return Err(NUL_REFUSED.into());
        }
        parse(&s)
    })
}

pub const NUL_REFUSED: &str = "must not contain the NUL character (U+0000)";

/// Whether a payload error is the body deadline's (see `deadline`).
pub fn timed_out(e: &actix_web::error::PayloadError) -> bool {
    matches!(e, actix_web::error::PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The error of a body that could not be read.
pub fn read_error(e: actix_web::error::PayloadError) -> ApiError {
    if timed_out(&e) {
        ApiError::RequestTimeout
    } else {
        ApiError::BadRequest {
            detail: format!("could not read the body: {e}"),
            param: None,
        }
    }
}

/// `http.body_timeout_secs`, as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub std::time::Duration);

/// Bounds the time a request body may take to arrive: past `http.body_timeout_secs` since
/// the request began, reading it fails (408) and the connection is closed, so that a client
/// trickling a body holds neither a connection nor a handler for long. WebSocket upgrades
/// are left alone: their "body" is the socket.
pub async fn deadline(
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let upgrade = headers.contains_key(header::UPGRADE);
    let limit = req
        .app_data::<web::Data<BodyTimeout>>()
        .map(|t| t.0)
        .filter(|_| has_body && !upgrade);
    let fired = std::rc::Rc::new(std::cell::Cell::new(false));
    if let Some(limit) = limit {
        let inner = req.take_payload();
        let stream = Deadline {
            inner,
            sleep: Box::pin(actix_web::rt::time::sleep(limit)),
            fired: fired.clone(),
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(stream),
        });
    }
    let mut response = next.call(req).await?;
    if fired.get() {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response)
}

struct Deadline {
    inner: Payload,
    sleep: Pin<Box<actix_web::rt::time::Sleep>>,
    fired: std::rc::Rc<std::cell::Cell<bool>>,
}

impl futures_util::Stream for Deadline {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.fired.get() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.fired.set(true);
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body took too long to arrive",
                ),
            ))));
        }
        Poll::Pending
    }
}

/// A JSON integer (no fraction, no exponent), then `check`.
pub fn integer<'a, T>(check: impl FnOnce(i64) -> Result<T, String> + 'a) -> Conv<'a, T> {
    Box::new(move |raw| {
        let text = raw.get();
        if text.is_empty()
            || !text
                .trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit())
        {
            return Err("must be an integer".into());
        }
        // Too large for i64 is out of any range the caller allows: let it say which.
        let n: i64 = text.parse().unwrap_or(if text.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        });
        check(n)
    })
}

/// Money: a JSON number or a decimal string, in plain notation.
pub fn amount<'a>() -> Conv<'a, Money> {
    Box::new(|raw| {
        let text = raw.get();
        if text.starts_with('"') {
            let s: String =
                serde_json::from_str(text).map_err(|_| "must be a string".to_string())?;
            Money::parse(&s)
        } else if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            Money::parse(text)
        } else {
            Err("must be a number or a decimal string such as \"1200.00\"".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(json: &str) -> Form {
        Form::new(JsonObject::parse(json.as_bytes()).unwrap_or_else(|_| panic!("{json}")))
    }

    #[test]
    fn all_errors_are_reported_together() {
        let mut f = form(r#"{"amount": 1e3, "quantity": 1.5, "extra": 1, "item": null}"#);
        assert!(f.required("amount", amount()).is_none());
        assert!(f.optional("quantity", integer(Ok)).is_none());
        assert!(f.required("item", text(|s| Ok(s.to_string()))).is_none());
        assert!(f.required("name", text(|s| Ok(s.to_string()))).is_none());
        let Err(ApiError::Validation(errors)) = f.finish() else {
            panic!("expected 422")
        };
        let fields: Vec<_> = errors.0.keys().cloned().collect();
        assert_eq!(fields, ["amount", "extra", "item", "name", "quantity"]);
    }

    #[test]
    fn amounts_keep_their_exact_text() {
        let mut f = form(r#"{"a": 1200.10, "b": "0.07", "c": 0.1}"#);
        assert_eq!(f.required("a", amount()).unwrap().to_string(), "1200.10");
        assert_eq!(f.required("b", amount()).unwrap().minor(), 7);
        assert_eq!(f.required("c", amount()).unwrap().minor(), 10);
        assert!(f.finish().is_ok());
    }

    #[test]
    fn hash_ignores_key_order_and_spacing() {
        let a = JsonObject::parse(br#"{"a":1,"b":"x"}"#).unwrap();
        let b = JsonObject::parse(br#"{ "b": "x", "a": 1 }"#).unwrap();
        assert_eq!(a.hash(), b.hash());
        let c = JsonObject::parse(br#"{"a":1,"b":"y"}"#).unwrap();
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn non_objects_and_bad_json_are_400() {
        assert!(matches!(
            JsonObject::parse(b"[1]"),
            Err(ApiError::BadRequest { .. })
        ));
        assert!(matches!(
            JsonObject::parse(b"{"),
            Err(ApiError::BadRequest { .. })
        ));
    }
}
