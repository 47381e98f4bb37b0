//! Roles: every /api/v1 route of the route table, called by every role. A role below the
//! one the route needs gets 403 (naming the role) and changes nothing; the others pass.
//! Roles of token entries, /auth/me, the OpenAPI document and the settings' checks.

use crate::support::*;
use duka::auth::role::Role;
use duka::config::{NamedToken, TokenEntry};
use reqwest::Method;
use serde_json::{Value, json};

const VIEWER: &str = "viewer-token-0001";
const STAFF: &str = "staff-token-00001";
const ADMIN: &str = "admin-token-00001";

fn token_of(role: Role) -> &'static str {
    match role {
        Role::Viewer => VIEWER,
        Role::Staff => STAFF,
        Role::Admin => ADMIN,
    }
}

fn named(token: &str, role: &str, name: Option<&str>) -> TokenEntry {
    TokenEntry::Named(NamedToken {
        token: token.into(),
        role: role.into(),
        name: name.map(str::to_string),
    })
}

async fn spawn_roles_app() -> TestApp {
    spawn_app_with(|s| {
        // Nothing changes behind the test's back (the SMS dispatcher would).
        s.sms.enabled = false;
        s.auth.tokens = vec![
            TOKEN.into(),
            named(VIEWER, "viewer", Some("Front desk")),
            named(STAFF, "staff", None),
            named(ADMIN, "admin", Some("Owner")),
        ];
    })
    .await
}

/// Everything a request could change, as one comparable value.
async fn fingerprint(app: &TestApp) -> Vec<i64> {
    let db = app.db.connect().await;
    let mut out = Vec::new();
    for sql in [
        "SELECT last_seq FROM event_counter",
        "SELECT COUNT(*) FROM customers",
        "SELECT COUNT(*) FROM orders",
        "SELECT COUNT(*) FROM notifications",
        "SELECT COUNT(*) FROM events",
        "SELECT COALESCE(MAX(updated_at), 0) FROM customers",
        "SELECT COALESCE(MAX(updated_at), 0) FROM orders",
    ] {
        out.push(scalar(&db, sql).await);
    }
    out
}

/// A request for `method path` that would do its work if allowed: real ids in the path, a
/// valid body. Fresh rows for each call, so that an allowed delete has something to delete.
async fn request_for(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    let customer = app.create_customer(json!({})).await;
    let cid = customer["id"].as_str().unwrap().to_string();
    let spare = app.create_customer(json!({})).await;
    let order = app.create_order(&cid, json!({})).await;
    let oid = order["id"].as_str().unwrap().to_string();
    // A customer without orders can be deleted; one with orders cannot.
    let path_id = if path.starts_with("/api/v1/customers/{id}") {
        if *method == Method::DELETE {
            spare["id"].as_str().unwrap().to_string()
        } else {
            cid.clone()
        }
    } else {
        oid
    };
    assert!(
        !path.replace("{id}", "").contains('{'),
        "{method} {path}: a path parameter this test does not know how to fill"
    );
    let url = format!("{}{}", app.url, path.replace("{id}", &path_id));
    let request = app.client.request(method.clone(), url).bearer_auth(token);
    match (method.as_str(), path) {
        ("POST", "/api/v1/customers") => request.json(&json!({
            "name": "Role test", "phone": unique_phone()
        })),
        ("POST", "/api/v1/orders") => request.json(&json!({
            "customer_id": cid, "item": "Role test", "amount": "10.00"
        })),
        ("POST", "/api/v1/customers/import") => request
            .header("content-type", "text/csv")
            .body(format!("name,phone\nImported,{}\n", unique_phone())),
        ("PATCH", "/api/v1/customers/{id}") => request.json(&json!({"name": "Renamed"})),
        ("PATCH", "/api/v1/orders/{id}") => request.json(&json!({"status": "confirmed"})),
        ("POST", _) | ("PATCH", _) => request.json(&json!({})),
        _ => request,
    }
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_route_table_says() {
    let app = spawn_roles_app().await;
    let routes = duka::http::api_routes().api.roles();
    assert!(routes.len() >= 20, "{routes:?}");
    for (method, path, needed) in routes {
        let needed = needed.unwrap_or_else(|| panic!("{method} {path} names no role"));
        let method = Method::from_bytes(method.as_str().as_bytes()).unwrap();
        // The contract's table: reads for viewers, deletes for admins, other changes for staff.
        let expected = match method {
            Method::GET => Role::Viewer,
            Method::DELETE => Role::Admin,
            _ => Role::Staff,
        };
        assert_eq!(needed, expected, "{method} {path}");
        for role in Role::ALL {
            let request = request_for(&app, &method, &path, token_of(role)).await;
            let before = fingerprint(&app).await;
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            if role < needed {
                let body = assert_problem(r, 403, &[]).await;
                let detail = body["detail"].as_str().unwrap();
                assert!(
                    detail.contains(needed.as_str()),
                    "{method} {path} as {role}: {detail}"
                );
                assert_eq!(
                    fingerprint(&app).await,
                    before,
                    "{method} {path} as {role} changed something"
                );
            } else {
                // Past the role check: whatever the route itself answers (the WebSocket
                // wants an upgrade, a resend wants SMS enabled).
                let text = r.text().await.unwrap_or_default();
                assert!(
                    ![401, 403].contains(&status) && status < 500,
                    "{method} {path} as {role}: {status} {text}"
                );
            }
        }
    }
}

#[tokio::test]
async fn token_entries_name_their_principal_and_role() {
    let app = spawn_roles_app().await;
    let me = |token: &'static str| {
        let app = &app;
        async move {
            app.client
                .get(format!("{}/auth/me", app.url))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let admin = me(TOKEN).await;
    assert_eq!(
        (&admin["role"], &admin["name"]),
        (&json!("admin"), &json!("API token 1"))
    );
    let viewer = me(VIEWER).await;
    assert_eq!(
        (&viewer["role"], &viewer["name"]),
        (&json!("viewer"), &json!("Front desk"))
    );
    let staff = me(STAFF).await;
    assert_eq!(
        (&staff["role"], &staff["name"]),
        (&json!("staff"), &json!("API token 3"))
    );
    assert_eq!(me(ADMIN).await["role"], "admin");

    // A browser session made with a token has the token's role.
    let r = app
        .client
        .post(format!("{}/auth/session", app.url))
        .json(&json!({ "token": VIEWER }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    let me = json_of(
        app.client
            .get(format!("{}/auth/me", app.url))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(
        (&me["role"], &me["name"]),
        (&json!("viewer"), &json!("Front desk"))
    );
    let customer = app.create_customer(json!({})).await;
    let r = app
        .client
        .delete(format!(
            "{}/api/v1/customers/{}",
            app.url,
            customer["id"].as_str().unwrap()
        ))
        .header("cookie", &cookie)
        .header("origin", &app.url)
        .send()
        .await
        .unwrap();
    assert_problem(r, 403, &[]).await;
}

#[tokio::test]
async fn the_generated_token_is_an_admin() {
    let app = spawn_app_with(|s| s.auth.tokens.clear()).await;
    let token = std::fs::read_to_string(app.data_dir.path().join("api-token")).unwrap();
    let me = json_of(
        app.client
            .get(format!("{}/auth/me", app.url))
            .bearer_auth(token.trim()),
    )
    .await;
    assert_eq!(me["role"], "admin");
}

#[tokio::test]
async fn a_token_entry_with_an_unknown_role_stops_the_start_naming_it() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&db, dir.path());
    settings.auth.tokens = vec![TOKEN.into(), named(VIEWER, "boss", None)];
    let err = start_error(settings).await;
    assert!(err.contains("auth.tokens[1].role"), "{err}");
    assert!(err.contains("viewer, staff or admin"), "{err}");
}

#[tokio::test]
async fn the_openapi_document_names_each_operations_role() {
    let app = spawn_app().await;
    let doc = json_of(app.client.get(format!("{}/api/v1/openapi.json", app.url))).await;
    for (method, path, role) in duka::http::api_routes().api.roles() {
        let op = &doc["paths"][&path][method.as_str().to_lowercase()];
        let role = role.unwrap();
        assert_eq!(op["x-duka-role"], role.as_str(), "{method} {path}");
        assert!(
            op["description"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("`{role}`"))),
            "{method} {path}: {op}"
        );
        assert!(op["responses"]["403"].is_object(), "{method} {path}");
    }
}
