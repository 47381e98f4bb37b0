//! OIDC mode: the issuer is discovered at start; API bearer JWTs are verified with
//! `jsonwebtoken` against the issuer's JWKS (cached; refreshed when a token names an unknown
//! key and on a timer, as the JWKS's `Cache-Control: max-age` says and at least daily, so a
//! withdrawn key stops being trusted; never more than once per `REFRESH_EVERY`); browsers
//! sign in with the authorization code flow (PKCE, state, nonce) run by `openidconnect`.

use super::role::{Role, RoleFacts};
use super::session::SessionKey;
use super::{AuthFailure, Principal, Verified};
use crate::config;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use url::Url;

/// A flood of tokens naming unknown keys fetches the JWKS at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// The JWKS is fetched again at least this often, whatever its `max-age` says.
const REFRESH_AT_LEAST: Duration = Duration::from_secs(86_400);
/// After a failed scheduled fetch, the next try comes this soon (the old keys stay).
const RETRY_FAILED: Duration = Duration::from_secs(60);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// How long a sign-in may take between /auth/login and /auth/callback.
const LOGIN_TTL_SECS: i64 = 600;

struct Keys {
    /// For bearer tokens: `(kid, key, the key's own alg)`.
    jwt: Vec<(Option<String>, DecodingKey, Option<String>)>,
    /// The same set for `openidconnect`'s ID token verifier.
    core: CoreJsonWebKeySet,
    /// How long the issuer says the set may be cached.
    max_age: Option<Duration>,
}

pub struct OidcAuth {
    settings: config::Oidc,
    audience: String,
    issuer: IssuerUrl,
    jwks_uri: Url,
    /// Present when browser sign-in is possible.
    metadata: Option<CoreProviderMetadata>,
    http: openidconnect::reqwest::Client,
    /// Asymmetric algorithms the issuer advertises (never `none` or HMAC).
    algs: Vec<Algorithm>,
    core_algs: Vec<CoreJwsSigningAlgorithm>,
    keys: RwLock<Keys>,
    /// When the JWKS was last fetched because of an unknown key.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiscoveryError(String);

/// The claims duka reads from a bearer token (the rest are checked by `jsonwebtoken`).
#[derive(Deserialize)]
struct BearerClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
    /// Some issuers write it as a float.
    exp: f64,
    /// Every other claim, for `auth.oidc.role_claim`.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// `email_verified` as issuers write it: a boolean, or (some) the string "true".
fn verified_flag(value: Option<&serde_json::Value>) -> Option<bool> {
    match value? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => Some(s == "true"),
        _ => Some(false),
    }
}

/// A sign-in in progress, kept in a signed short-lived cookie between login and callback
/// (so any instance, even after a restart, can finish it).
#[derive(Serialize, Deserialize)]
pub struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    expires_at: i64,
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn to_jwt_alg(alg: &CoreJwsSigningAlgorithm) -> Option<Algorithm> {
    let name = serde_json::to_value(alg).ok()?;
    Algorithm::from_str(name.as_str()?).ok()
}

impl OidcAuth {
    /// Discovers the issuer and fetches its keys; fails when it cannot be reached.
    ///
    /// The discovery document is read as JSON first, because bearer verification needs only
    /// `issuer`, `jwks_uri` and the algorithms: issuers that offer no browser sign-in (Firebase's
    /// `securetoken.google.com` has no authorization endpoint) still work for API tokens and
    /// `POST /auth/session`. Browser sign-in is on when `openidconnect` accepts the full
    /// metadata and `client_secret` and `redirect_url` are set.
    pub async fn discover(settings: &config::Oidc) -> Result<Self, DiscoveryError> {
        let fail = |what: String| DiscoveryError(format!("auth.oidc.issuer_url: {what}"));
        let http = openidconnect::reqwest::Client::builder()
            // Following redirects would let a discovery or JWKS URL send us anywhere.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DiscoveryError(format!("cannot build an HTTP client: {e}")))?;
        let issuer =
            IssuerUrl::new(settings.issuer_url.clone()).map_err(|e| fail(e.to_string()))?;
        let discovery_url = issuer
            .join(".well-known/openid-configuration")
            .map_err(|e| fail(e.to_string()))?;
        let cannot = |e: String| {
            fail(format!(
                "cannot discover the OpenID provider at {}: {e}",
                settings.issuer_url
            ))
        };
        let response = http
            .get(discovery_url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| cannot(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(cannot(format!(
                "{discovery_url} answered {}",
                response.status()
            )));
        }
        let raw: serde_json::Value = response
            .json()
            .await
            .map_err(|e| cannot(format!("{discovery_url} is not JSON: {e}")))?;
        // Exact string comparison: `https://x/` and `https://x` are different issuers.
        if raw["issuer"].as_str() != Some(settings.issuer_url.as_str()) {
            return Err(cannot(format!(
                "the provider calls itself {} (use exactly that)",
                raw["issuer"]
            )));
        }
        let jwks_uri = raw["jwks_uri"]
            .as_str()
            .and_then(|u| Url::parse(u).ok())
            .ok_or_else(|| cannot("its metadata has no valid jwks_uri".into()))?;
        let core_algs: Vec<CoreJwsSigningAlgorithm> = raw["id_token_signing_alg_values_supported"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| serde_json::from_value::<CoreJwsSigningAlgorithm>(a.clone()).ok())
            .filter(|a| to_jwt_alg(a).is_some_and(is_asymmetric))
            .collect();
        let algs: Vec<Algorithm> = core_algs.iter().filter_map(to_jwt_alg).collect();
        if algs.is_empty() {
            return Err(cannot(
                "it advertises no asymmetric signing algorithm".into(),
            ));
        }
        let metadata = match serde_json::from_value::<CoreProviderMetadata>(raw) {
            Ok(m) if m.token_endpoint().is_some() => Some(m),
            Ok(_) => None,
            Err(e) => {
                tracing::info!(error = %e, "the issuer offers no browser sign-in; API tokens only");
                None
            }
        };
        let login_configured =
            !settings.client_secret.is_empty() && !settings.redirect_url.is_empty();
        if metadata.is_some() && !login_configured {
            tracing::info!(
                "browser sign-in is off: set auth.oidc.client_secret and auth.oidc.redirect_url"
            );
        }
        let audience = if settings.audience.is_empty() {
            settings.client_id.clone()
        } else {
            settings.audience.clone()
        };
        let keys = fetch_keys(&http, &jwks_uri).await.map_err(fail)?;
        Ok(Self {
            settings: settings.clone(),
            audience,
            issuer,
            jwks_uri,
            metadata: metadata.filter(|_| login_configured),
            http,
            algs,
            core_algs,
            keys: RwLock::new(keys),
            last_refresh: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether browsers can sign in here (the issuer has the endpoints, duka the client).
    pub fn can_sign_in(&self) -> bool {
        self.metadata.is_some()
    }

    /// Fetches the JWKS again unless that happened less than `REFRESH_EVERY` ago; `false`
    /// when it was due but could not be fetched.
    async fn refresh_keys(&self) -> bool {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return true;
        }
        *last = Some(Instant::now());
        match fetch_keys(&self.http, &self.jwks_uri).await {
            Ok(keys) => {
                if let Ok(mut current) = self.keys.write() {
                    *current = keys;
                }
                tracing::info!("OIDC signing keys refreshed");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the OIDC signing keys");
                false
            }
        }
    }

    /// How long until the cached JWKS is due again.
    fn keys_due_in(&self) -> Duration {
        self.keys
            .read()
            .ok()
            .and_then(|k| k.max_age)
            .unwrap_or(REFRESH_AT_LEAST)
            .clamp(REFRESH_EVERY, REFRESH_AT_LEAST)
    }

    /// Refetches the JWKS whenever it is due, so that a key the issuer withdrew stops being
    /// trusted even when no token names an unknown key. Runs until the actix system stops.
    pub async fn keep_keys_fresh(self: std::sync::Arc<Self>) {
        let mut wait = self.keys_due_in();
        loop {
            tokio::time::sleep(wait).await;
            wait = if self.refresh_keys().await {
                self.keys_due_in()
            } else {
                RETRY_FAILED.min(self.keys_due_in())
            };
        }
    }

    /// Finds the key for `kid` (or the only key when the token names none).
    fn find_key(&self, kid: Option<&str>) -> Option<(DecodingKey, Option<String>)> {
        let keys = self.keys.read().ok()?;
        match kid {
            Some(kid) => keys
                .jwt
                .iter()
                .find(|(k, _, _)| k.as_deref() == Some(kid))
                .map(|(_, key, alg)| (key.clone(), alg.clone())),
            None if keys.jwt.len() == 1 => keys.jwt.first().map(|(_, k, a)| (k.clone(), a.clone())),
            None => None,
        }
    }

    /// Verifies an API bearer JWT: signature, algorithm, `iss`, `aud`, `exp`, `nbf`.
    pub async fn verify_bearer(&self, token: &str) -> Result<Verified, AuthFailure> {
        let header = peek_header(token).ok_or(AuthFailure::Malformed)?;
        let alg = header
            .alg
            .as_deref()
            .and_then(|a| Algorithm::from_str(a).ok())
            .filter(|a| self.algs.contains(a))
            .ok_or(AuthFailure::DisallowedAlgorithm)?;
        let kid = header.kid.as_deref();
        let found = match self.find_key(kid) {
            Some(found) => found,
            None => {
                self.refresh_keys().await;
                self.find_key(kid).ok_or(AuthFailure::UnknownKey)?
            }
        };
        let (key, key_alg) = found;
        if key_alg.is_some_and(|a| Algorithm::from_str(&a).ok() != Some(alg)) {
            return Err(AuthFailure::DisallowedAlgorithm);
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer_url]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<BearerClaims>(token, &key, &validation).map_err(|e| match e
                .kind()
            {
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
                ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
                ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm
                | ErrorKind::UnsupportedAlgorithm => AuthFailure::DisallowedAlgorithm,
                ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidKeyFormat => AuthFailure::UnknownKey,
                _ => AuthFailure::Malformed,
            })?;
        let c = data.claims;
        let verified = verified_flag(c.email_verified.as_ref());
        let facts = RoleFacts {
            email_verified: verified == Some(true),
            claimed: self.claimed_role(&c.other),
        };
        // Text that reaches the database (sessions, events' actor) must not hold U+0000,
        // which PostgreSQL refuses.
        let nul = |t: &Option<String>| t.as_deref().is_some_and(|t| t.contains('\0'));
        if c.sub.is_empty() || c.sub.contains('\0') || nul(&c.name) || nul(&c.email) {
            return Err(AuthFailure::Malformed);
        }
        let role = self.role_of(c.email.as_deref(), facts);
        let principal = Principal {
            subject: c.sub,
            name: c.name,
            email: c.email,
            mode: "oidc",
            role,
        };
        self.check_allowed(&principal, verified)?;
        Ok(Verified {
            principal,
            expires_at: Some(c.exp as i64),
            facts,
        })
    }

    /// The highest role `auth.oidc.role_claim` names among `claims`.
    fn claimed_role(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<Role> {
        let name = self.settings.role_claim.as_str();
        if name.is_empty() {
            return None;
        }
        claims.get(name).and_then(Role::highest_in)
    }

    /// The role of a signed-in identity: the highest of `auth.oidc.default_role`, the
    /// `staff` / `admins` lists (a verified e-mail only, in any case) and the role claim.
    pub fn role_of(&self, email: Option<&str>, facts: RoleFacts) -> Role {
        let s = &self.settings;
        let listed = |list: &[String]| {
            facts.email_verified
                && email.is_some_and(|e| list.iter().any(|l| l.eq_ignore_ascii_case(e.trim())))
        };
        let by_list = if listed(&s.admins) {
            Some(Role::Admin)
        } else if listed(&s.staff) {
            Some(Role::Staff)
        } else {
            None
        };
        [Some(s.default_role), by_list, facts.claimed]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(Role::Viewer)
    }

    /// `allowed_domains` / `allowed_emails`: when either is set, the email must be listed and
    /// said to be verified (`email_verified: true`): an issuer that lets anyone claim any
    /// address must not let them in.
    pub fn check_allowed(
        &self,
        principal: &Principal,
        email_verified: Option<bool>,
    ) -> Result<(), AuthFailure> {
        let s = &self.settings;
        if s.allowed_domains.is_empty() && s.allowed_emails.is_empty() {
            return Ok(());
        }
        let Some(email) = principal.email.as_deref() else {
            return Err(AuthFailure::NotAllowed(
                "sign-in is restricted and the identity carries no email".into(),
            ));
        };
        if email_verified != Some(true) {
            return Err(AuthFailure::NotAllowed(
                "sign-in is restricted and this email is not verified".into(),
            ));
        }
        if is_allowed(email, &s.allowed_domains, &s.allowed_emails) {
            Ok(())
        } else {
            Err(AuthFailure::NotAllowed(
                "this account is not allowed to use this service".into(),
            ))
        }
    }

    fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        String,
    > {
        let redirect = RedirectUrl::new(self.settings.redirect_url.clone())
            .map_err(|e| format!("auth.oidc.redirect_url: {e}"))?;
        let metadata = self
            .metadata
            .clone()
            .ok_or_else(|| "browser sign-in is not available".to_string())?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// The issuer's authorization URL for a new sign-in, and the sealed state to keep in a
    /// cookie until the callback.
    pub fn start_login(&self, next: String, key: &SessionKey) -> Result<(Url, String), String> {
        let client = self.client()?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let login = LoginState {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            next,
            expires_at: chrono::Utc::now().timestamp() + LOGIN_TTL_SECS,
        };
        let payload = serde_json::to_vec(&login).map_err(|e| e.to_string())?;
        Ok((url, key.seal("login", &payload)))
    }

    /// Finishes a sign-in: checks `state` against the cookie, exchanges the code (with the PKCE
    /// verifier), verifies the ID token (signature, issuer, audience, expiry, nonce) and the
    /// allow lists. Returns the principal and where to go next.
    pub async fn finish_login(
        &self,
        sealed: Option<&str>,
        key: &SessionKey,
        code: &str,
        state: &str,
    ) -> Result<(Principal, RoleFacts, String), AuthFailure> {
        let login: LoginState = sealed
            .and_then(|v| key.open("login", v))
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(AuthFailure::Login(
                "no sign-in is in progress in this browser",
            ))?;
        if login.expires_at < chrono::Utc::now().timestamp() {
            return Err(AuthFailure::Login("the sign-in took too long; start again"));
        }
        if !bool::from(login.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(AuthFailure::Login("the sign-in state does not match"));
        }
        let client = self.client().map_err(|e| {
            tracing::error!(error = %e, "OIDC client configuration");
            AuthFailure::Login("sign-in is misconfigured")
        })?;
        let request = client.exchange_code(AuthorizationCode::new(code.to_string()));
        let response = match request {
            Ok(r) => {
                r.set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
                    .request_async(&self.http)
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, "the issuer has no token endpoint");
                return Err(AuthFailure::Login("sign-in is misconfigured"));
            }
        }
        .map_err(|e| {
            tracing::warn!(error = %error_chain(&e), "the issuer refused the authorization code");
            AuthFailure::Login("the issuer did not accept the authorization code")
        })?;
        let id_token = response
            .id_token()
            .ok_or(AuthFailure::Login("the issuer returned no ID token"))?;
        let nonce = Nonce::new(login.nonce.clone());
        let mut refreshed = false;
        let claims = loop {
            let keys = self
                .keys
                .read()
                .map(|k| k.core.clone())
                .map_err(|_| AuthFailure::Login("the signing keys are unavailable"))?;
            let verifier = CoreIdTokenVerifier::new_public_client(
                ClientId::new(self.settings.client_id.clone()),
                self.issuer.clone(),
                keys,
            )
            .set_allowed_algs(self.core_algs.clone());
            match id_token.claims(&verifier, &nonce) {
                Ok(claims) => break claims.clone(),
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if !refreshed => {
                    refreshed = true;
                    self.refresh_keys().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ID token refused");
                    return Err(AuthFailure::Login("the ID token is not valid"));
                }
            }
        };
        // The token's signature and claims were verified above; its payload is read again
        // only for the role claim, which the standard claims do not carry.
        let payload = id_token
            .to_string()
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).ok()
            })
            .and_then(|bytes| {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
            })
            .unwrap_or_default();
        let facts = RoleFacts {
            email_verified: claims.email_verified() == Some(true),
            claimed: self.claimed_role(&payload),
        };
        let email = claims.email().map(|e| e.as_str().to_string());
        let principal = Principal {
            subject: claims.subject().as_str().to_string(),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string()),
            role: self.role_of(email.as_deref(), facts),
            email,
            mode: "oidc",
        };
        let nul = |t: &Option<String>| t.as_deref().is_some_and(|t| t.contains('\0'));
        if principal.subject.contains('\0') || nul(&principal.name) || nul(&principal.email) {
            return Err(AuthFailure::Login("the ID token is not valid"));
        }
        self.check_allowed(&principal, claims.email_verified())?;
        Ok((principal, facts, login.next))
    }
}

fn is_allowed(email: &str, domains: &[String], emails: &[String]) -> bool {
    let email = email.trim().to_ascii_lowercase();
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    emails.iter().any(|e| e.to_ascii_lowercase() == email)
        || (!domain.is_empty() && domains.iter().any(|d| d.to_ascii_lowercase() == domain))
}

#[derive(Deserialize)]
struct PeekedHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// The JOSE header, read before anything else so that `none` and HMAC are refused by name.
fn peek_header(token: &str) -> Option<PeekedHeader> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (header, _, _, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    if rest.is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn fetch_keys(http: &openidconnect::reqwest::Client, uri: &Url) -> Result<Keys, String> {
    let response = http
        .get(uri.clone())
        .send()
        .await
        .map_err(|e| format!("cannot fetch the JWKS at {uri}: {}", error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("the JWKS at {uri} answered {}", response.status()));
    }
    let max_age = response
        .headers()
        .get(openidconnect::reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("cannot read the JWKS at {uri}: {e}"))?;
    let raw: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the JWKS at {uri} is not JSON: {e}"))?;
    let core: CoreJsonWebKeySet = serde_json::from_value(raw.clone())
        .map_err(|e| format!("the JWKS at {uri} is not a key set: {e}"))?;
    let mut jwt = Vec::new();
    for value in raw["keys"].as_array().into_iter().flatten() {
        // Keys this verifier cannot use (encryption keys, unknown types) are skipped.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = value["alg"].as_str().map(str::to_string);
        jwt.push((jwk.common.key_id.clone(), key, alg));
    }
    Ok(Keys { jwt, core, max_age })
}

/// `max-age` of a `Cache-Control` header (`no-cache`/`no-store` mean now).
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            age = secs
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Where to go after signing in: a path on this site, else `/`. Refuses absolute URLs,
/// scheme-relative `//host` and `/\host` (browsers read the backslash as a slash).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control)
                && n.len() <= 2048 =>
        {
            n.to_string()
        }
        _ => "/".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        for good in ["/", "/orders?status=pending", "/a/b#c"] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "https://evil.com",
            "evil.com",
            "/\t/evil.com",
            "",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn allow_lists_match_exact_emails_and_whole_domains() {
        let domains = vec!["example.com".to_string()];
        let emails = vec!["Boss@Other.org".to_string()];
        assert!(is_allowed("ann@example.com", &domains, &emails));
        assert!(is_allowed("ANN@EXAMPLE.COM", &domains, &emails));
        assert!(is_allowed("boss@other.org", &domains, &emails));
        assert!(!is_allowed("ann@other.org", &domains, &emails));
        assert!(!is_allowed("ann@evilexample.com", &domains, &emails));
        assert!(!is_allowed("ann@example.com.evil.io", &domains, &emails));
    }

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(
            max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        assert!(is_asymmetric(Algorithm::RS256) && is_asymmetric(Algorithm::ES256));
        assert!(!is_asymmetric(Algorithm::HS256));
        assert_eq!(
            to_jwt_alg(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256),
            Some(Algorithm::RS256)
        );
        assert!(to_jwt_alg(&CoreJwsSigningAlgorithm::None).is_none());
    }
}
