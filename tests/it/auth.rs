//! Authentication, black-box: OIDC bearer tokens and browser sign-in against a real OpenID
//! provider (panva's oidc-provider on loopback), and browser sessions in both modes.

use crate::oidc::{self, Browser, Provider, set_cookie, spawn_oidc_app};
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::Method;
use serde_json::{Value, json};

/// An unauthenticated request with extra headers.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = app.client.request(method, format!("{}{path}", app.url));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    r.send().await.expect("request")
}

/// A WebSocket upgrade request carrying a session cookie and an `Origin`.
async fn ws_upgrade(app: &TestApp, cookie_header: &str, origin: &str) -> reqwest::Response {
    let headers = [
        ("cookie", cookie_header),
        ("origin", origin),
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    send(app, Method::GET, "/api/v1/ws", &headers, None).await
}

async fn with_bearer(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    let auth = format!("Bearer {token}");
    send(app, Method::GET, path, &[("authorization", &auth)], None).await
}

async fn with_cookie(app: &TestApp, method: Method, path: &str, cookie: &str) -> reqwest::Response {
    let cookie = format!("duka_session={cookie}");
    let origin = app.url.clone();
    let body =
        (method == Method::POST).then(|| json!({ "name": "Wanjiru", "phone": unique_phone() }));
    send(
        app,
        method,
        path,
        &[("cookie", &cookie), ("origin", &origin)],
        body,
    )
    .await
}

/// The checks a token can fail: which one failed goes to the log, never to the caller, who
/// could otherwise probe the verifier check by check.
const TOKEN_CHECKS: &[&str] = &[
    "expired",
    "not valid yet",
    "audience",
    "issuer",
    "signature",
    "algorithm",
    "unknown key",
    "malformed",
    "not valid",
];

/// Asserts a 401 problem: for a token's checks with the one generic detail, otherwise (a
/// session, a sign-in step) with a detail that names `reason`.
async fn assert_refused(r: reqwest::Response, reason: &str) {
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.starts_with("Bearer")),
        Some(true)
    );
    let body = assert_problem(r, 401, &[]).await;
    let detail = body["detail"].as_str().unwrap();
    if TOKEN_CHECKS.contains(&reason) {
        assert_eq!(
            detail, "the credentials are not valid",
            "refused for {reason:?}"
        );
    } else {
        assert!(detail.contains(reason), "expected {reason:?} in {detail:?}");
    }
}

#[tokio::test]
async fn bearer_tokens_are_verified_and_every_failure_gets_the_same_answer() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |_| {}).await;
    let now = chrono::Utc::now().timestamp();

    let good = provider.mint(&provider.claims("alice"), "current").await;
    let r = with_bearer(&app, "/api/v1/customers", &good).await;
    assert_eq!(r.status(), 200);
    let me: Value = with_bearer(&app, "/auth/me", &good)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        json!({"subject": "alice", "name": "Test alice", "email": "alice@example.com", "mode": "oidc", "role": "viewer"})
    );
    // The WebSocket path takes the token from the query (it passes auth, then finds no
    // such route in this build if live events are not merged yet: anything but 401).
    let ws = send(
        &app,
        Method::GET,
        &format!("/api/v1/ws?access_token={good}"),
        &[],
        None,
    )
    .await;
    assert_ne!(ws.status(), 401);
    let ws = send(&app, Method::GET, "/api/v1/ws?access_token=nope", &[], None).await;
    assert_eq!(ws.status(), 401);

    let mut claims = provider.claims("alice");
    claims["exp"] = json!(now - 600);
    let token = provider.mint(&claims, "current").await;
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &token).await,
        "expired",
    )
    .await;

    let mut claims = provider.claims("alice");
    claims["nbf"] = json!(now + 600);
    let token = provider.mint(&claims, "current").await;
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &token).await,
        "not valid yet",
    )
    .await;

    let mut claims = provider.claims("alice");
    claims["aud"] = json!("someone-else");
    let token = provider.mint(&claims, "current").await;
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &token).await,
        "audience",
    )
    .await;

    // Issuers are compared exactly: a trailing slash is another issuer.
    for iss in [
        format!("{}/", provider.issuer),
        "https://evil.example".to_string(),
    ] {
        let mut claims = provider.claims("alice");
        claims["iss"] = json!(iss);
        let token = provider.mint(&claims, "current").await;
        assert_refused(
            with_bearer(&app, "/api/v1/customers", &token).await,
            "issuer",
        )
        .await;
    }

    // The payload changed after signing: the signature no longer matches.
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(payload.to_string()),
        parts[2]
    );
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &tampered).await,
        "signature",
    )
    .await;
    // Signed by another key that claims the issuer's kid.
    let forged = provider.mint(&provider.claims("alice"), "impostor").await;
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &forged).await,
        "signature",
    )
    .await;

    // `alg: none` with no signature at all.
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &none).await,
        "algorithm",
    )
    .await;
    // HS256 keyed with the issuer's public key (algorithm confusion).
    let hs = provider
        .mint_raw(json!({ "claims": provider.claims("alice"), "attack": "hs256-public" }))
        .await;
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &hs).await,
        "algorithm",
    )
    .await;

    let stranger = provider.mint(&provider.claims("alice"), "stranger").await;
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &stranger).await,
        "unknown key",
    )
    .await;

    for garbage in ["abc", "a.b.c", "a.b.c.d", &good[..good.len() / 2]] {
        let r = with_bearer(&app, "/api/v1/customers", garbage).await;
        assert_eq!(r.status(), 401, "{garbage}");
    }
    assert_refused(
        with_bearer(&app, "/api/v1/customers", "x.y.z").await,
        "malformed",
    )
    .await;

    // The issuer's own ID tokens are for the client id, not the API audience.
    let mut claims = provider.claims("alice");
    claims["aud"] = json!(oidc::CLIENT_ID);
    let id_token = provider.mint(&claims, "current").await;
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &id_token).await,
        "audience",
    )
    .await;
}

#[tokio::test]
async fn rotated_keys_are_fetched_and_unknown_keys_do_not_hammer_the_issuer() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |_| {}).await;
    let before_rotation = provider.mint(&provider.claims("alice"), "current").await;
    assert_eq!(
        with_bearer(&app, "/api/v1/customers", &before_rotation)
            .await
            .status(),
        200
    );

    let fetches = provider.jwks_fetches().await;
    provider.rotate().await;
    let after_rotation = provider.mint(&provider.claims("alice"), "current").await;
    assert_eq!(
        with_bearer(&app, "/api/v1/customers", &after_rotation)
            .await
            .status(),
        200
    );
    assert_eq!(
        provider.jwks_fetches().await,
        fetches + 1,
        "one refresh for the new kid"
    );

    // The old key left the issuer's JWKS, so it left ours with the refresh.
    assert_refused(
        with_bearer(&app, "/api/v1/customers", &before_rotation).await,
        "unknown key",
    )
    .await;
    // A flood of tokens naming unknown keys does not turn into a flood of JWKS requests.
    // (At most one refresh per 5 s: the 50 requests below take far less on loopback.)
    let stranger = provider.mint(&provider.claims("alice"), "stranger").await;
    let fetches = provider.jwks_fetches().await;
    let flood = (0..50).map(|_| with_bearer(&app, "/api/v1/customers", &stranger));
    for r in futures_util::future::join_all(flood).await {
        assert_eq!(r.status(), 401);
    }
    assert!(provider.jwks_fetches().await <= fetches + 1);
    assert_eq!(
        with_bearer(&app, "/api/v1/customers", &after_rotation)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn browser_sign_in_makes_a_session_that_survives_a_restart_until_logout() {
    let provider = Provider::start().await;
    // Wanjiku may take orders: listed as staff (any case), her e-mail verified.
    let mut app = spawn_oidc_app(&provider, |s| {
        s.auth.oidc.staff = vec!["Wanjiku@Example.com".into()];
    })
    .await;
    let browser = Browser::new();

    let r = browser
        .sign_in(&app, "wanjiku", "/api/v1/customers?limit=1")
        .await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    assert_eq!(r.headers()["location"], "/api/v1/customers?limit=1");
    let set = set_cookie(&r, "duka_session").expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain http is not Secure: {set}");
    let cookie = browser
        .cookie(&app, "duka_session")
        .expect("the browser keeps it");
    assert!(!cookie.contains("wanjiku"), "the cookie is opaque");

    let me: Value = browser
        .client
        .get(format!("{}/auth/me", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        json!({"subject": "wanjiku", "name": "Test wanjiku", "email": "wanjiku@example.com", "mode": "oidc", "role": "staff"})
    );
    assert_eq!(
        with_cookie(&app, Method::GET, "/api/v1/customers", &cookie)
            .await
            .status(),
        200
    );
    assert_eq!(
        with_cookie(&app, Method::POST, "/api/v1/customers", &cookie)
            .await
            .status(),
        201
    );

    // A cookie-authenticated change from another site, or with no Origin, is refused.
    let cookie_header = format!("duka_session={cookie}");
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let mut headers = vec![("cookie", cookie_header.as_str())];
        if let Some(origin) = origin {
            headers.push(("origin", origin));
        }
        let body = json!({ "name": "Mallory", "phone": unique_phone() });
        let r = send(
            &app,
            Method::POST,
            "/api/v1/customers",
            &headers,
            Some(body),
        )
        .await;
        assert_problem(r, 403, &[]).await;
    }

    // The session is in the database: it outlives the server process.
    app.restart(true).await;
    assert_eq!(
        with_cookie(&app, Method::GET, "/auth/me", &cookie)
            .await
            .status(),
        200
    );

    let r = send(
        &app,
        Method::POST,
        "/auth/logout",
        &[
            ("cookie", &cookie_header),
            ("origin", "http://evil.example"),
        ],
        None,
    )
    .await;
    assert_problem(r, 403, &[]).await;
    let origin = app.url.clone();
    let r = browser
        .manual
        .post(format!("{}/auth/logout", app.url))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(set_cookie(&r, "duka_session").is_some_and(|c| c.contains("Max-Age=0")));
    // A saved copy of the cookie is worthless now, also after another restart.
    assert_refused(
        with_cookie(&app, Method::GET, "/auth/me", &cookie).await,
        "session",
    )
    .await;
    app.restart(true).await;
    assert_refused(
        with_cookie(&app, Method::GET, "/api/v1/customers", &cookie).await,
        "session",
    )
    .await;
}

#[tokio::test]
async fn callback_with_a_wrong_state_or_a_replayed_code_is_refused() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |_| {}).await;
    use reqwest::cookie::CookieStore;
    let browser = Browser::new();
    let callback = browser.sign_in_until_callback(&app, "amina", "/").await;
    let login_cookie = browser
        .jar
        .cookies(&callback)
        .map(|v| v.to_str().unwrap().to_string())
        .expect("the sign-in cookie");

    let mut wrong = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    wrong.query_pairs_mut().clear();
    for (k, v) in &pairs {
        let v = if k == "state" {
            format!("{v}x")
        } else {
            v.clone()
        };
        wrong.query_pairs_mut().append_pair(k, &v);
    }
    let r = browser.manual.get(wrong).send().await.unwrap();
    assert_refused(r, "state").await;
    assert!(browser.cookie(&app, "duka_session").is_none());

    // Without the browser's sign-in cookie (another browser, e.g. a victim lured to an
    // attacker's callback URL) the state proves nothing.
    let r = app.client.get(callback.clone()).send().await.unwrap();
    assert_refused(r, "sign-in").await;

    // The real callback works once...
    let r = browser.manual.get(callback.clone()).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(browser.cookie(&app, "duka_session").is_some());
    // ...and a replay is refused, by us (the sign-in cookie is gone) and, with a saved copy
    // of that cookie, by the issuer (a code is good once).
    let r = browser.manual.get(callback.clone()).send().await.unwrap();
    assert_refused(r, "sign-in").await;
    let r = app
        .client
        .get(callback.clone())
        .header("cookie", login_cookie)
        .send()
        .await
        .unwrap();
    assert_refused(r, "authorization code").await;
}

#[tokio::test]
async fn next_only_leads_to_paths_on_this_site() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |_| {}).await;
    for (next, expected) in [
        ("//evil.com", "/"),
        ("/\\evil.com", "/"),
        ("https://evil.com/x", "/"),
        ("/orders?status=pending", "/orders?status=pending"),
    ] {
        let r = Browser::new().sign_in(&app, "kamau", next).await;
        assert_eq!(r.status(), 303, "{next}");
        assert_eq!(r.headers()["location"], expected, "{next}");
    }
}

#[tokio::test]
async fn allowed_domains_and_emails_restrict_who_gets_in() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |s| {
        s.auth.oidc.allowed_domains = vec!["example.com".into()];
        s.auth.oidc.allowed_emails = vec!["boss@partner.org".into()];
    })
    .await;

    let r = Browser::new().sign_in(&app, "mallory@evil.test", "/").await;
    assert_problem(r, 403, &[]).await;
    let r = Browser::new().sign_in(&app, "ann", "/").await;
    assert_eq!(r.status(), 303);
    let r = Browser::new().sign_in(&app, "boss@partner.org", "/").await;
    assert_eq!(r.status(), 303);

    let mut claims = provider.claims("mallory");
    claims["email"] = json!("mallory@evil.test");
    let token = provider.mint(&claims, "current").await;
    assert_problem(
        with_bearer(&app, "/api/v1/customers", &token).await,
        403,
        &[],
    )
    .await;
    let mut claims = provider.claims("sneaky");
    claims["email_verified"] = json!(false);
    let token = provider.mint(&claims, "current").await;
    assert_problem(
        with_bearer(&app, "/api/v1/customers", &token).await,
        403,
        &[],
    )
    .await;
    let token = provider.mint(&provider.claims("ann"), "current").await;
    assert_eq!(
        with_bearer(&app, "/api/v1/customers", &token)
            .await
            .status(),
        200
    );
}

/// Firebase-like: the issuer publishes keys but no sign-in endpoints. API tokens work, and
/// a page that signed in with the issuer's SDK trades its ID token for a session cookie.
#[tokio::test]
async fn an_issuer_without_sign_in_endpoints_serves_api_tokens_and_sessions() {
    let provider = Provider::start_with(&[("OIDC_BEARER_ONLY", "1")]).await;
    let app = spawn_oidc_app(&provider, |s| {
        s.auth.oidc.client_secret.clear();
        s.auth.oidc.redirect_url.clear();
        s.auth.oidc.audience.clear();
        s.auth.oidc.client_id = "my-firebase-project".into();
    })
    .await;
    let mut claims = provider.claims("uid-1");
    claims["aud"] = json!("my-firebase-project");
    let token = provider.mint(&claims, "current").await;
    assert_eq!(
        with_bearer(&app, "/api/v1/customers", &token)
            .await
            .status(),
        200
    );
    let r = send(&app, Method::GET, "/auth/login?next=/", &[], None).await;
    assert_problem(r, 404, &[]).await;

    let r = send(
        &app,
        Method::POST,
        "/auth/session",
        &[],
        Some(json!({ "token": token })),
    )
    .await;
    assert_eq!(r.status(), 204);
    let set = set_cookie(&r, "duka_session").unwrap();
    let cookie = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("duka_session=")
        .to_string();
    let me: Value = with_cookie(&app, Method::GET, "/auth/me", &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["subject"], "uid-1");
    assert_eq!(me["mode"], "oidc");
    let mut claims = provider.claims("uid-1");
    claims["exp"] = json!(chrono::Utc::now().timestamp() - 600);
    let expired = provider.mint(&claims, "current").await;
    let r = send(
        &app,
        Method::POST,
        "/auth/session",
        &[],
        Some(json!({ "token": expired })),
    )
    .await;
    assert_refused(r, "expired").await;
}

#[tokio::test]
async fn an_unreachable_issuer_stops_the_start_with_a_clear_message() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(&db, dir.path());
    s.auth.mode = duka::config::AuthMode::Oidc;
    // Nothing listens on port 9 of loopback here.
    s.auth.oidc.issuer_url = "http://127.0.0.1:9".into();
    s.auth.oidc.client_id = "duka".into();
    s.auth.oidc.client_secret = "secret".into();
    s.auth.oidc.redirect_url = "http://127.0.0.1:8080/auth/callback".into();
    s.auth.oidc.allow_any_account = true;
    let err = start_error(s).await;
    assert!(
        err.starts_with(
            "auth.oidc.issuer_url: cannot discover the OpenID provider at http://127.0.0.1:9"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn token_mode_browser_session_and_logout() {
    // The test client is the TLS-terminating proxy below.
    let app = spawn_app_with(|s| s.http.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let origin = app.url.clone();
    let r = send(
        &app,
        Method::POST,
        "/auth/session",
        &[("origin", &origin)],
        Some(json!({ "token": "wrong-token-123" })),
    )
    .await;
    assert_refused(r, "not valid").await;
    let r = send(&app, Method::POST, "/auth/session", &[], Some(json!({}))).await;
    assert_problem(r, 422, &["token"]).await;
    let r = send(
        &app,
        Method::POST,
        "/auth/session",
        &[("origin", "http://evil.example")],
        Some(json!({ "token": TOKEN })),
    )
    .await;
    assert_problem(r, 403, &[]).await;

    let r = send(
        &app,
        Method::POST,
        "/auth/session",
        &[("origin", &origin)],
        Some(json!({ "token": TOKEN })),
    )
    .await;
    assert_eq!(r.status(), 204);
    let set = set_cookie(&r, "duka_session").expect("a session cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && !set.contains("Secure"));
    let cookie = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("duka_session=")
        .to_string();
    assert!(!cookie.contains(TOKEN));

    let me: Value = with_cookie(&app, Method::GET, "/auth/me", &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["mode"], "token");
    assert_eq!(
        with_cookie(&app, Method::GET, "/api/v1/customers", &cookie)
            .await
            .status(),
        200
    );
    assert_eq!(
        with_cookie(&app, Method::POST, "/api/v1/customers", &cookie)
            .await
            .status(),
        201
    );
    let cookie_header = format!("duka_session={cookie}");
    let body = json!({ "name": "Mallory", "phone": unique_phone() });
    let r = send(
        &app,
        Method::POST,
        "/api/v1/customers",
        &[
            ("cookie", &cookie_header),
            ("origin", "http://evil.example"),
        ],
        Some(body),
    )
    .await;
    assert_problem(r, 403, &[]).await;
    // The WebSocket upgrade is a GET, but a cookie on it from another site is refused too
    // (cross-site WebSocket hijacking); from this site it upgrades.
    let r = ws_upgrade(&app, &cookie_header, "http://evil.example").await;
    assert_problem(r, 403, &[]).await;
    assert_eq!(
        ws_upgrade(&app, &cookie_header, &origin).await.status(),
        101
    );
    // Bearer clients need no Origin.
    assert_eq!(
        app.post(
            "/api/v1/customers",
            &json!({ "name": "Otieno", "phone": unique_phone() })
        )
        .await
        .status(),
        201
    );

    // Behind a TLS-terminating proxy the cookie is Secure.
    let r = send(
        &app,
        Method::POST,
        "/auth/session",
        &[("x-forwarded-proto", "https")],
        Some(json!({ "token": TOKEN })),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert!(set_cookie(&r, "duka_session").unwrap().contains("Secure"));

    // A forged cookie value is refused without a session.
    let forged = format!("{}x", &cookie);
    assert_refused(
        with_cookie(&app, Method::GET, "/auth/me", &forged).await,
        "session",
    )
    .await;

    let r = send(
        &app,
        Method::POST,
        "/auth/logout",
        &[("cookie", &cookie_header), ("origin", &origin)],
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_refused(
        with_cookie(&app, Method::GET, "/auth/me", &cookie).await,
        "session",
    )
    .await;
    // Sign-in with OIDC is not on in token mode.
    let r = send(&app, Method::GET, "/auth/login?next=/", &[], None).await;
    assert_problem(r, 404, &[]).await;
}

#[tokio::test]
async fn a_session_ends_when_its_token_is_removed_from_the_settings() {
    let mut app = spawn_app_with(|s| s.auth.tokens.push("second-token-0002".into())).await;
    let r = send(
        &app,
        Method::POST,
        "/auth/session",
        &[],
        Some(json!({ "token": "second-token-0002" })),
    )
    .await;
    assert_eq!(r.status(), 204);
    let set = set_cookie(&r, "duka_session").unwrap();
    let cookie = set
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("duka_session=")
        .to_string();
    assert_eq!(
        with_cookie(&app, Method::GET, "/auth/me", &cookie)
            .await
            .status(),
        200
    );
    app.settings
        .auth
        .tokens
        .retain(|t| t.token() != "second-token-0002");
    app.restart(true).await;
    assert_refused(
        with_cookie(&app, Method::GET, "/auth/me", &cookie).await,
        "session",
    )
    .await;
}

async fn role_with_bearer(app: &TestApp, token: &str) -> Value {
    let me: Value = with_bearer(app, "/auth/me", token)
        .await
        .json()
        .await
        .unwrap();
    me["role"].clone()
}

#[tokio::test]
async fn oidc_roles_come_from_the_default_the_email_lists_and_the_role_claim() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |s| {
        s.auth.oidc.staff = vec!["Front@Example.com".into()];
        s.auth.oidc.admins = vec!["boss@example.com".into()];
        s.auth.oidc.role_claim = "roles".into();
    })
    .await;
    let with = |sub: &str, extra: Value| {
        let mut claims = provider.claims(sub);
        crate::support::merge(&mut claims, extra);
        claims
    };
    let cases = [
        // Nobody listed, no claim: the default role.
        (with("anyone", json!({})), "viewer"),
        // The e-mail lists, in any case, only for verified addresses.
        (with("front", json!({})), "staff"),
        (
            with("FRONT", json!({"email": "FRONT@example.COM"})),
            "staff",
        ),
        (with("front", json!({"email_verified": false})), "viewer"),
        (with("front", json!({"email_verified": "true"})), "staff"),
        (with("boss", json!({})), "admin"),
        (with("boss", json!({"email_verified": false})), "viewer"),
        // The role claim, as a string or an array: the highest named role wins, unknown
        // names count for nothing.
        (with("anyone", json!({"roles": "staff"})), "staff"),
        (
            with("anyone", json!({"roles": ["viewer", "admin"]})),
            "admin",
        ),
        (
            with("anyone", json!({"roles": ["Admin", "owner", 3]})),
            "viewer",
        ),
        (with("front", json!({"roles": "viewer"})), "staff"),
        (with("boss", json!({"roles": ["staff"]})), "admin"),
    ];
    for (claims, role) in cases {
        let token = provider.mint(&claims, "current").await;
        assert_eq!(role_with_bearer(&app, &token).await, role, "{claims}");
    }

    // The role decides: a viewer reads, and is refused a change (nothing is created).
    let viewer = provider.mint(&with("anyone", json!({})), "current").await;
    let staff = provider.mint(&with("front", json!({})), "current").await;
    let post = |token: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/api/v1/customers", app.url))
                .bearer_auth(token)
                .json(&json!({"name": "Wanjiru", "phone": unique_phone()}))
                .send()
                .await
                .unwrap()
        }
    };
    let body = assert_problem(post(viewer.clone()).await, 403, &[]).await;
    assert!(body["detail"].as_str().unwrap().contains("staff"), "{body}");
    assert_eq!(post(staff).await.status(), 201);
    let list: Value = with_bearer(&app, "/api/v1/customers", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn oidc_default_role_is_a_setting() {
    let provider = Provider::start().await;
    let app = spawn_oidc_app(&provider, |s| {
        s.auth.oidc.default_role = duka::auth::role::Role::Staff;
    })
    .await;
    let token = provider.mint(&provider.claims("anyone"), "current").await;
    assert_eq!(role_with_bearer(&app, &token).await, "staff");
}

#[tokio::test]
async fn a_browser_sessions_role_follows_the_settings_and_the_claim_it_signed_in_with() {
    let provider = Provider::start().await;
    let mut app = spawn_oidc_app(&provider, |s| {
        s.auth.oidc.admins = vec!["ann@example.com".into()];
        s.auth.oidc.role_claim = "roles".into();
    })
    .await;
    let sign_in = |login: &'static str| {
        let app = &app;
        async move {
            let browser = Browser::new();
            let r = browser.sign_in(app, login, "/").await;
            assert_eq!(r.status(), 303, "{login}");
            let cookie = browser.cookie(app, "duka_session").unwrap();
            let me: Value = with_cookie(app, Method::GET, "/auth/me", &cookie)
                .await
                .json()
                .await
                .unwrap();
            (cookie, me["role"].clone())
        }
    };
    let (ann, role) = sign_in("ann").await;
    assert_eq!(role, "admin");
    // An unverified address is not trusted for the lists.
    let (_, role) = sign_in("ann~unverified").await;
    assert_eq!(role, "viewer");
    // The role claim of the ID token, as an array and as a string.
    let (claimed, role) = sign_in("cara~roles=viewer,staff").await;
    assert_eq!(role, "staff");
    let (_, role) = sign_in("dan~role=admin").await;
    assert_eq!(role, "admin");

    // Ann is taken off the admins list: her session is a viewer's from the next request
    // on; the claim a session signed in with still counts.
    app.settings.auth.oidc.admins.clear();
    app.restart(true).await;
    let me: Value = with_cookie(&app, Method::GET, "/auth/me", &ann)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "viewer");
    assert_eq!(
        with_cookie(&app, Method::POST, "/api/v1/customers", &ann)
            .await
            .status(),
        403
    );
    assert_eq!(
        with_cookie(&app, Method::POST, "/api/v1/customers", &claimed)
            .await
            .status(),
        201
    );
}
