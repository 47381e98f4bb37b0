//! Browser sessions, the same in both modes. The cookie holds a random session id signed
//! with the session key; the database holds only the SHA-256 of that id with the principal
//! and an expiry. Logging out deletes the row, so a saved copy of the cookie is worthless,
//! and rows outlive a restart. The signature lets forged cookies be refused without a
//! database read.

use super::Principal;
use super::role::{Role, RoleFacts};
use crate::domain::event::Actor;
use crate::http::problem::ApiError;
use crate::store::entities::session;
use crate::store::ops::WriteOp;
use crate::store::reader::GetSession;
use crate::store::repository::Write;
use crate::store::{Reader, Repository};
use actix::Addr;
use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SESSION_COOKIE: &str = "duka_session";

/// The secret that signs cookie values (sessions, sign-ins in progress).
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// From `auth.session_key`, or else the key file in `data_dir` (created on first start).
    pub fn load(configured: &str, data_dir: &Path) -> std::io::Result<Self> {
        if !configured.is_empty() {
            return Ok(Self(Sha256::digest(configured.as_bytes()).into()));
        }
        let (text, _) = super::token::load_or_create_secret(&key_file(data_dir), "")?;
        Ok(Self(Sha256::digest(text.as_bytes()).into()))
    }

    /// Names the key without revealing it: the first 16 hex digits of the SHA-256 of an
    /// HMAC of a fixed label. Kept in the database, so that the instances of a deployment can
    /// tell that they sign with the same key.
    pub fn fingerprint(&self) -> String {
        let tag = self
            .mac("deployment fingerprint", b"duka session key")
            .finalize()
            .into_bytes();
        let mut hex = hex::encode(Sha256::digest(tag));
        hex.truncate(16);
        hex
    }

    /// The key of this instance (see `load`), checked against the one the deployment uses:
    /// the first instance to start records its fingerprint; an instance with another key
    /// refuses to start, since its cookies would look forged on every other instance and
    /// theirs on it. The error is the message to stop the start with.
    pub async fn load_for_deployment(
        configured: &str,
        data_dir: &Path,
        db: &impl sea_orm::ConnectionTrait,
    ) -> Result<Self, String> {
        use crate::store::deployment::{KeyCheck, check_session_key};
        let key = Self::load(configured, data_dir)
            .map_err(|e| format!("cannot keep the session key in {}: {e}", data_dir.display()))?;
        let ours = key.fingerprint();
        match check_session_key(db, &ours).await {
            Ok(KeyCheck::Recorded) => {
                tracing::info!(
                    fingerprint = %ours,
                    "recorded this session key as the deployment's"
                );
                Ok(key)
            }
            Ok(KeyCheck::Same) => Ok(key),
            Ok(KeyCheck::Differs(theirs)) => {
                let source = if configured.is_empty() {
                    format!(
                        "none is configured, so this instance uses the key generated into {}",
                        key_file(data_dir).display()
                    )
                } else {
                    "this instance's is the one configured".to_string()
                };
                Err(format!(
                    "auth.session_key: this instance's session key (fingerprint {ours}) is not                      the one the deployment uses (fingerprint {theirs}); {source}. Give every                      instance sharing the database the same auth.session_key. To change the                      key on purpose (everyone is signed out), run `duka migrate                      --reset-session-key` with the new key, then start every instance with it"
                ))
            }
            Err(e) => Err(format!(
                "cannot check the session key against the deployment's (has `duka migrate`                  run?): {e}"
            )),
        }
    }

    /// Makes this instance's key the deployment's (`duka migrate --reset-session-key`): the
    /// sessions signed with the old key stop working, and instances still holding it refuse
    /// to start until they are given the new one. Answers the new fingerprint.
    pub async fn reset_for_deployment(
        configured: &str,
        data_dir: &Path,
        db: &impl sea_orm::ConnectionTrait,
    ) -> Result<String, String> {
        let key = Self::load(configured, data_dir)
            .map_err(|e| format!("cannot keep the session key in {}: {e}", data_dir.display()))?;
        let fingerprint = key.fingerprint();
        crate::store::deployment::reset_session_key(db, &fingerprint)
            .await
            .map_err(|e| format!("cannot record the session key: {e}"))?;
        Ok(fingerprint)
    }

    fn mac(&self, purpose: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        // The purpose keeps a value signed for one use from being accepted for another.
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }

    /// `payload` and its signature, cookie-safe.
    pub fn seal(&self, purpose: &str, payload: &[u8]) -> String {
        let tag = self.mac(purpose, payload).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The payload of a value made by `seal` for the same purpose, if untouched.
    pub fn open(&self, purpose: &str, value: &str) -> Option<Vec<u8>> {
        let (payload, tag) = value.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(purpose, &payload).verify_slice(&tag).ok()?;
        Some(payload)
    }
}

pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("session-key")
}

/// Creates and ends sessions through the Repository actor; finds them through a Reader.
pub struct Sessions {
    pub key: SessionKey,
    repo: Addr<Repository>,
    reader: Addr<Reader>,
    ttl: Duration,
}

fn id_hash(id: &[u8]) -> String {
    hex::encode(Sha256::digest(id))
}

impl Sessions {
    pub fn new(
        key: SessionKey,
        repo: Addr<Repository>,
        reader: Addr<Reader>,
        ttl: Duration,
    ) -> Self {
        Self {
            key,
            repo,
            reader,
            ttl,
        }
    }

    /// Starts a session for `principal`, lasting the configured time or until `until`
    /// (seconds since the epoch: the expiry of the token it was made from), whichever comes
    /// first; returns the cookie to set.
    pub async fn create(
        &self,
        principal: &Principal,
        facts: RoleFacts,
        req: &HttpRequest,
        until: Option<i64>,
    ) -> Result<Cookie<'static>, ApiError> {
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let now = crate::domain::time::Timestamp::now().millis();
        let mut ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 2);
        if let Some(until) = until {
            ttl_ms = ttl_ms.min(until.saturating_mul(1000).saturating_sub(now));
        }
        if ttl_ms <= 0 {
            return Err(ApiError::Unauthorized(
                "the credentials are not valid".into(),
            ));
        }
        let row = session::Model {
            id_hash: id_hash(&id),
            subject: principal.subject.clone(),
            name: principal.name.clone(),
            email: principal.email.clone(),
            mode: principal.mode.to_string(),
            email_verified: facts.email_verified,
            claimed_role: facts.claimed.map(|r| r.as_str().to_string()),
            created_at: now,
            expires_at: now.saturating_add(ttl_ms),
        };
        self.repo
            .send(Write::new(
                WriteOp::CreateSession(row),
                Actor::from(principal),
            ))
            .await??;
        let value = self.key.seal("session", &id);
        let max_age = CookieDuration::seconds((ttl_ms / 1000).max(1));
        Ok(cookie(SESSION_COOKIE, value, "/", req, Some(max_age)))
    }

    /// The session a cookie value names, what decides its role, and when it expires (ms
    /// since the epoch): `Ok(None)` when forged, ended or expired. The principal's role is
    /// the least one: the caller decides it from the settings in force.
    pub async fn find(&self, value: &str) -> Result<Option<(Principal, RoleFacts, i64)>, ApiError> {
        let Some(id) = self.key.open("session", value) else {
            return Ok(None);
        };
        let row = self
            .reader
            .send(GetSession {
                id_hash: id_hash(&id),
            })
            .await??;
        Ok(row.and_then(|r| {
            let mode = match r.mode.as_str() {
                "token" => "token",
                "oidc" => "oidc",
                _ => return None,
            };
            let facts = RoleFacts {
                email_verified: r.email_verified,
                claimed: r.claimed_role.as_deref().and_then(Role::parse),
            };
            Some((
                Principal {
                    subject: r.subject,
                    name: r.name,
                    email: r.email,
                    mode,
                    role: Role::Viewer,
                },
                facts,
                r.expires_at,
            ))
        }))
    }

    /// What names a session in the database (and the hub's table of sockets), if the
    /// cookie value is genuine.
    pub fn id_hash_of(&self, value: &str) -> Option<String> {
        self.key.open("session", value).map(|id| id_hash(&id))
    }

    /// Ends the session a cookie value names (nothing when it names none); returns its
    /// id hash.
    pub async fn end(&self, value: &str) -> Result<Option<String>, ApiError> {
        let Some(hash) = self.id_hash_of(value) else {
            return Ok(None);
        };
        self.repo
            .send(Write::new(
                WriteOp::EndSession {
                    id_hash: hash.clone(),
                },
                Actor::auth(),
            ))
            .await??;
        Ok(Some(hash))
    }
}

pub use crate::http::security::is_https;

/// An HttpOnly, SameSite=Lax cookie, Secure when the request came over https.
pub fn cookie(
    name: &'static str,
    value: String,
    path: &'static str,
    req: &HttpRequest,
    max_age: Option<CookieDuration>,
) -> Cookie<'static> {
    let mut c = Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(is_https(req))
        .finish();
    if let Some(max_age) = max_age {
        c.set_max_age(max_age);
    }
    c
}

/// A cookie that makes the browser forget `name`.
pub fn removal(name: &'static str, path: &'static str, req: &HttpRequest) -> Cookie<'static> {
    let mut c = cookie(name, String::new(), path, req, None);
    c.make_removal();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_untouched_and_for_their_purpose() {
        let key = SessionKey([7; 32]);
        let sealed = key.seal("session", b"abc");
        assert_eq!(key.open("session", &sealed).as_deref(), Some(&b"abc"[..]));
        assert_eq!(key.open("login", &sealed), None);
        assert_eq!(SessionKey([8; 32]).open("session", &sealed), None);
        let (payload, tag) = sealed.split_once('.').unwrap();
        let other = B64.encode(b"abd");
        assert_eq!(key.open("session", &format!("{other}.{tag}")), None);
        assert_eq!(key.open("session", payload), None);
        assert_eq!(key.open("session", ""), None);
    }

    #[test]
    fn the_fingerprint_names_the_key_without_showing_it() {
        let a = SessionKey([7; 32]).fingerprint();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, SessionKey([7; 32]).fingerprint());
        assert_ne!(a, SessionKey([8; 32]).fingerprint());
        assert!(!hex::encode([7u8; 32]).contains(&a));
    }

    #[test]
    fn configured_key_is_used_and_generated_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = SessionKey::load("", dir.path()).unwrap();
        let b = SessionKey::load("", dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        let c = SessionKey::load("a configured key of at least 32 chars", dir.path()).unwrap();
        assert_ne!(a.0, c.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_file(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
