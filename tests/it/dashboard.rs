//! The dashboard in a real headless Chromium (Debian's chromium + chromium-driver), driven
//! over WebDriver with fantoccini. Screenshots of the main views are saved under
//! `target/tmp/screenshots/` for a reviewer.

use crate::fake_at::{self, FakeAt};
use crate::sms::{SECRET, all_have_status, at_app, delivery, report, wait_notifications};
use crate::support::*;
use duka::config::{NamedToken, Settings, SmsProviderKind, TokenEntry};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver; scripts/test does it)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new browser with its own profile (so its own cookies).
    async fn browser(&self, profile: &tempfile::TempDir) -> Client {
        // Two TLS backends are in the test tree (reqwest's and fantoccini's); pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::rustls()
            .expect("a TLS config")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("screenshot saved");
}

/// The view as it is, at 1280 px and at 375 px wide (`NAME.png`, `NAME-375px.png`).
async fn screenshots(browser: &Client, name: &str) {
    screenshot(browser, name).await;
    browser.set_window_size(375, 800).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    screenshot(browser, &format!("{name}-375px")).await;
    browser.set_window_size(1280, 900).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Waits until `css` matches exactly `n` elements.
async fn wait_count(browser: &Client, css: &str, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = browser
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        if found == n {
            return;
        }
        if Instant::now() > deadline {
            screenshot(browser, &format!("timeout-{}", what.replace(' ', "-"))).await;
            panic!("timed out waiting for {n} of {css} ({what}); found {found}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn texts(browser: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in browser.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.text().await.unwrap());
    }
    out
}

async fn attr(browser: &Client, css: &str, name: &str) -> Option<String> {
    browser
        .find(Locator::Css(css))
        .await
        .expect(css)
        .attr(name)
        .await
        .unwrap()
}

/// Clicks "Yes" in the page's confirmation dialog, once it is open.
async fn confirm(browser: &Client) {
    wait_text(browser, "#confirm-text", "the confirmation", |t| {
        !t.is_empty()
    })
    .await;
    let open = attr(browser, "#confirm", "open").await;
    assert!(open.is_some(), "the confirmation dialog is open");
    click(browser, "#confirm-yes").await;
}

/// Waits until `css` matches an element whose text satisfies `pred`; returns the text.
async fn wait_text(browser: &Client, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok(e) = browser.find(Locator::Css(css)).await
            && let Ok(text) = e.text().await
        {
            if pred(&text) {
                return text;
            }
            last = text;
        }
        if Instant::now() > deadline {
            screenshot(browser, &format!("timeout-{}", what.replace(' ', "-"))).await;
            panic!("timed out waiting for {what} ({css}); last text: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(browser: &Client, css: &str, value: &str) {
    let input = browser.find(Locator::Css(css)).await.expect(css);
    input.clear().await.expect("clear");
    input.send_keys(value).await.expect("type");
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

async fn sign_in(browser: &Client, url: &str) {
    sign_in_as(browser, url, TOKEN).await;
}

/// Signs in through the page's token form with `token`.
async fn sign_in_as(browser: &Client, url: &str, token: &str) {
    browser.goto(url).await.expect("open the dashboard");
    wait_text(browser, "#view-sign-in h1", "the sign-in page", |t| {
        t.contains("Sign in")
    })
    .await;
    fill(browser, "#token", token).await;
    click(browser, "#token-form button[type=submit]").await;
    wait_text(browser, "#connection", "the live indicator", |t| {
        t == "live"
    })
    .await;
}

#[tokio::test]
async fn a_day_at_the_shop_in_two_browsers() {
    let mut app = spawn_app().await;
    let driver = Driver::start();
    let (p1, p2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let staff = driver.browser(&p1).await;
    let watcher = driver.browser(&p2).await;

    // Signing in with a wrong token says so, next to the field.
    staff.goto(&app.url).await.unwrap();
    wait_text(&staff, "#view-sign-in h1", "the sign-in page", |t| {
        t.contains("Sign in")
    })
    .await;
    fill(&staff, "#token", "not-the-token").await;
    click(&staff, "#token-form button[type=submit]").await;
    wait_text(&staff, "[data-error-for=token]", "the token error", |t| {
        !t.is_empty()
    })
    .await;
    screenshot(&staff, "sign-in-error").await;

    sign_in(&staff, &app.url).await;
    sign_in(&watcher, &app.url).await;

    // A customer through the form; a bad phone first shows an inline error.
    staff
        .goto(&format!("{}/#/new-customer", app.url))
        .await
        .unwrap();
    fill(&staff, "#customer-name", "Wanjiku Kamau").await;
    fill(&staff, "#customer-phone", "12345").await;
    click(&staff, "#customer-form button[type=submit]").await;
    let error = wait_text(
        &staff,
        "#customer-form [data-error-for=phone]",
        "the phone error",
        |t| !t.is_empty(),
    )
    .await;
    assert!(error.to_lowercase().contains("phone"), "{error}");
    let invalid = staff
        .find(Locator::Css("#customer-phone"))
        .await
        .unwrap()
        .attr("aria-invalid")
        .await
        .unwrap();
    assert_eq!(invalid.as_deref(), Some("true"));
    screenshot(&staff, "customer-form-error").await;
    let phone = unique_phone();
    fill(&staff, "#customer-phone", &phone).await;
    fill(&staff, "#customer-code", "wanjiku").await;
    click(&staff, "#customer-form button[type=submit]").await;
    wait_text(
        &staff,
        "#customer-form [data-ok]",
        "the customer confirmation",
        |t| t.contains("WANJIKU"),
    )
    .await;

    // An order through the form, with an item that tries to inject markup.
    let xss = "<img src=x onerror=alert(1)>";
    staff
        .goto(&format!("{}/#/new-order", app.url))
        .await
        .unwrap();
    fill(&staff, "#order-customer", "WANJIKU").await;
    fill(&staff, "#order-item", xss).await;
    fill(&staff, "#order-amount", "1200").await;
    click(&staff, "#order-form button[type=submit]").await;
    let ok = wait_text(
        &staff,
        "#order-form [data-ok]",
        "the order confirmation",
        |t| t.contains("ORD-"),
    )
    .await;
    let number = ok
        .split_whitespace()
        .find(|w| w.starts_with("ORD-"))
        .unwrap()
        .to_string();

    // The other browser sees it live, as text, and its SMS badge turns to sent.
    let row = "#orders-body tr:first-child".to_string();
    wait_text(&watcher, &row, "the new order in the second browser", |t| {
        t.contains(&number)
    })
    .await;
    let item = wait_text(
        &watcher,
        &format!("{row} td:nth-child(3)"),
        "the item cell",
        |t| !t.is_empty(),
    )
    .await;
    assert_eq!(item, xss, "the item shows as text");
    let injected = watcher
        .find_all(Locator::Css("#orders-body img"))
        .await
        .unwrap();
    assert!(injected.is_empty(), "markup from data was rendered");
    wait_text(
        &watcher,
        &format!("{row} .badge"),
        "the SMS badge to turn sent",
        |t| t == "sent" || t == "delivered",
    )
    .await;
    wait_text(&watcher, "#count-orders", "the orders-today counter", |t| {
        t == "1"
    })
    .await;
    screenshot(&watcher, "orders-live").await;

    // The order detail: valid transitions as buttons, the notification history.
    click(&watcher, &format!("{row} a")).await;
    wait_text(&watcher, "#order-title", "the order page", |t| {
        t.contains(&number)
    })
    .await;
    let buttons: Vec<String> = {
        let mut v = Vec::new();
        for b in watcher
            .find_all(Locator::Css("#order-actions button"))
            .await
            .unwrap()
        {
            v.push(b.attr("data-status").await.unwrap().unwrap_or_default());
        }
        v
    };
    assert_eq!(buttons, ["confirmed", "cancelled"]);
    wait_text(
        &watcher,
        "#notifications-body tr:first-child td:nth-child(3)",
        "the notification history",
        |t| t == "sent" || t == "delivered",
    )
    .await;
    click(&watcher, "#order-actions button[data-status=confirmed]").await;
    wait_text(&watcher, "#order-details", "the confirmed status", |t| {
        t.contains("confirmed")
    })
    .await;
    screenshot(&watcher, "order-detail").await;
    // ...and the staff's list follows live.
    staff.goto(&format!("{}/#/orders", app.url)).await.unwrap();
    wait_text(
        &staff,
        &format!("{row} .status"),
        "the status in the staff's list",
        |t| t == "confirmed",
    )
    .await;

    // Customers list with search.
    staff
        .goto(&format!("{}/#/customers", app.url))
        .await
        .unwrap();
    fill(&staff, "#customer-search", "wanj").await;
    wait_text(
        &staff,
        "#customers-body tr:first-child",
        "the customer search",
        |t| t.contains("WANJIKU"),
    )
    .await;
    screenshot(&staff, "customers").await;

    // A phone-sized screen still shows the orders.
    staff.set_window_size(375, 800).await.unwrap();
    staff.goto(&format!("{}/#/orders", app.url)).await.unwrap();
    wait_text(&staff, &row, "the orders on a small screen", |t| {
        t.contains(&number)
    })
    .await;
    screenshot(&staff, "orders-375px").await;

    // The server restarts; an order created meanwhile appears without a reload.
    click(&watcher, "#nav a[data-view=orders]").await;
    app.stop(true).await;
    wait_text(&watcher, "#connection", "the reconnecting indicator", |t| {
        t.contains("reconnecting")
    })
    .await;
    app.restart(true).await;
    let customer: Value = app
        .get("/api/v1/customers?q=WANJIKU")
        .await
        .json()
        .await
        .unwrap();
    let later = app
        .create_order(
            customer["items"][0]["id"].as_str().unwrap(),
            json!({ "item": "Made while you were away" }),
        )
        .await;
    wait_text(
        &watcher,
        "#connection",
        "the live indicator after the restart",
        |t| t == "live",
    )
    .await;
    wait_text(
        &watcher,
        &row,
        "the order created while the server was down",
        |t| t.contains(later["order_number"].as_str().unwrap()),
    )
    .await;
    screenshot(&watcher, "after-restart").await;

    staff.close().await.unwrap();
    watcher.close().await.unwrap();
}

/// Moves an order (and its SMS) `days` days into the past.
async fn backdate(app: &TestApp, order_id: &str, days: i64) {
    use duka::store::entities::{notification, order};
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let db = app.db.connect().await;
    let id = uuid::Uuid::parse_str(order_id).unwrap();
    let at = chrono::Utc::now().timestamp_millis() - days * 86_400_000;
    order::Entity::update_many()
        .col_expr(order::Column::CreatedAt, Expr::value(at))
        .filter(order::Column::Id.eq(id))
        .exec(&db)
        .await
        .unwrap();
    notification::Entity::update_many()
        .col_expr(notification::Column::CreatedAt, Expr::value(at))
        .filter(notification::Column::OrderId.eq(id))
        .exec(&db)
        .await
        .unwrap();
}

fn number(order: &Value) -> String {
    order["order_number"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn orders_are_found_by_filters_in_the_url_paged_and_followed_live() {
    let app = spawn_app().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let amina = app
        .create_customer(json!({ "name": "Amina Widgets", "code": "AMINA" }))
        .await;
    let juma = app
        .create_customer(json!({ "name": "Juma Gadgets", "code": "JUMA" }))
        .await;
    let (a, j) = (amina["id"].as_str().unwrap(), juma["id"].as_str().unwrap());
    for i in 0..55 {
        app.create_order(a, json!({ "item": format!("Widget {i}") }))
            .await;
    }
    let gadget = app
        .create_order(j, json!({ "item": "Gadget", "amount": "1234.50" }))
        .await;
    let r = app
        .patch(
            &format!("/api/v1/orders/{}", gadget["id"].as_str().unwrap()),
            &json!({ "status": "confirmed" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    sign_in(&browser, &app.url).await;

    // A bookmarked filter: the form shows it, the list holds only what matches.
    browser
        .goto(&format!("{}/#/orders?status=confirmed", app.url))
        .await
        .unwrap();
    wait_count(&browser, "#orders-body tr", "the confirmed orders", 1).await;
    let row = wait_text(&browser, "#orders-body tr", "the gadget", |t| {
        t.contains(&number(&gadget))
    })
    .await;
    assert!(row.contains("Juma Gadgets"), "{row}");
    assert_eq!(
        browser
            .find(Locator::Css("#filter-status"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        attr(&browser, "#orders-export", "href").await.as_deref(),
        Some("/api/v1/orders/export.csv?status=confirmed")
    );
    screenshots(&browser, "orders-filtered").await;

    // Search through the form: the URL follows; 50 a page, then "load more".
    browser
        .goto(&format!("{}/#/orders", app.url))
        .await
        .unwrap();
    wait_count(&browser, "#orders-body tr", "the first page", 50).await;
    fill(&browser, "#filter-q", "widget").await;
    click(&browser, "#order-filter button[type=submit]").await;
    wait_text(
        &browser,
        "#orders-body tr:first-child",
        "the newest widget",
        |t| t.contains("Widget 54"),
    )
    .await;
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.fragment(), Some("/orders?q=widget"));
    wait_count(&browser, "#orders-body tr", "the first page of widgets", 50).await;
    click(&browser, "#orders-more").await;
    wait_count(&browser, "#orders-body tr", "every widget", 55).await;
    assert!(
        !browser
            .find(Locator::Css("#orders-more"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    let last = texts(&browser, "#orders-body tr:last-child").await;
    assert!(last[0].contains("Widget 0"), "{last:?}");

    // Live: an order that does not match is not inserted; one that matches is, and is announced.
    let other = app.create_order(j, json!({ "item": "Gadget live" })).await;
    let live = app.create_order(a, json!({ "item": "Widget live" })).await;
    wait_text(
        &browser,
        "#orders-body tr:first-child",
        "the live widget",
        |t| t.contains(&number(&live)),
    )
    .await;
    wait_text(&browser, "#announcer", "the announcement", |t| {
        t.contains(&number(&live))
    })
    .await;
    assert!(attr(&browser, "#announcer", "aria-live").await.as_deref() == Some("polite"));
    let all = texts(&browser, "#orders-body tr").await.join("\n");
    assert!(
        !all.contains(&number(&other)),
        "a non-matching live order was inserted"
    );
    assert_eq!(all.lines().count(), 56);

    // A date range (today in the business time zone) and a customer, from the URL.
    let today = chrono::Utc::now().date_naive();
    browser
        .goto(&format!(
            "{}/#/orders?customer_id={j}&start_date={today}&end_date={today}",
            app.url
        ))
        .await
        .unwrap();
    wait_count(&browser, "#orders-body tr", "Juma's orders today", 2).await;
    let note = wait_text(
        &browser,
        "#filter-customer-note",
        "the customer note",
        |t| !t.is_empty(),
    )
    .await;
    assert!(note.contains("one customer"), "{note}");
    screenshots(&browser, "orders").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn a_customer_is_edited_with_a_field_error_then_fixed_and_deleted_after_confirmation() {
    let app = spawn_app().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let c = app
        .create_customer(json!({ "name": "Wanjiru Mwangi", "code": "WANJIRU" }))
        .await;
    let id = c["id"].as_str().unwrap();
    let order = app.create_order(id, json!({ "item": "Sofa" })).await;
    let lonely = app
        .create_customer(json!({ "name": "Nobody Orders", "code": "NOBODY" }))
        .await;
    sign_in(&browser, &app.url).await;

    browser
        .goto(&format!("{}/#/customers", app.url))
        .await
        .unwrap();
    wait_text(&browser, "#customers-body", "the customers", |t| {
        t.contains("WANJIRU")
    })
    .await;
    screenshots(&browser, "customers").await;
    click(
        &browser,
        &format!("#customers-body tr[data-customer=\"{id}\"] td:nth-child(2) a"),
    )
    .await;
    wait_text(&browser, "#customer-title", "the customer page", |t| {
        t.contains("Wanjiru Mwangi")
    })
    .await;
    wait_text(&browser, "#customer-orders-body", "their orders", |t| {
        t.contains(&number(&order))
    })
    .await;

    // A bad phone: the error shows next to the field, nothing changes.
    fill(&browser, "#edit-phone", "12345").await;
    fill(&browser, "#edit-name", "Wanjiru W. Mwangi").await;
    click(&browser, "#customer-edit button[type=submit]").await;
    let error = wait_text(
        &browser,
        "#customer-edit [data-error-for=phone]",
        "the phone error",
        |t| !t.is_empty(),
    )
    .await;
    assert!(
        error.to_lowercase().contains("phone") || error.contains("number"),
        "{error}"
    );
    assert_eq!(
        attr(&browser, "#edit-phone", "aria-invalid")
            .await
            .as_deref(),
        Some("true")
    );
    let now: Value = app
        .get(&format!("/api/v1/customers/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        now["name"], "Wanjiru Mwangi",
        "a refused change changes nothing"
    );
    screenshots(&browser, "customer-error").await;
    // Fixed: saved.
    let phone = unique_phone();
    fill(&browser, "#edit-phone", &phone).await;
    click(&browser, "#customer-edit button[type=submit]").await;
    wait_text(
        &browser,
        "#customer-edit [data-ok]",
        "the saved message",
        |t| t == "Saved.",
    )
    .await;
    wait_text(&browser, "#customer-title", "the new name", |t| {
        t.contains("Wanjiru W. Mwangi")
    })
    .await;
    let now: Value = app
        .get(&format!("/api/v1/customers/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now["phone"], phone.as_str());
    assert_eq!(now["name"], "Wanjiru W. Mwangi");
    let empty = texts(&browser, "#customer-edit [data-error-for=phone]").await;
    assert_eq!(empty, [""]);
    screenshots(&browser, "customer").await;

    // Delete asks first; a customer with orders stays, with the reason shown.
    click(&browser, "#customer-delete").await;
    confirm(&browser).await;
    let refused = wait_text(
        &browser,
        "#customer-edit [data-error-for=_]",
        "the refusal",
        |t| !t.is_empty(),
    )
    .await;
    assert!(refused.contains("order"), "{refused}");
    assert_eq!(
        app.get(&format!("/api/v1/customers/{id}")).await.status(),
        200
    );
    // Cancelling the confirmation deletes nothing.
    let lonely_id = lonely["id"].as_str().unwrap();
    browser
        .goto(&format!("{}/#/customers/{lonely_id}", app.url))
        .await
        .unwrap();
    wait_text(&browser, "#customer-title", "the other customer", |t| {
        t.contains("Nobody Orders")
    })
    .await;
    click(&browser, "#customer-delete").await;
    wait_text(&browser, "#confirm-text", "the confirmation", |t| {
        t.contains("Nobody Orders")
    })
    .await;
    click(&browser, "#confirm-no").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get(&format!("/api/v1/customers/{lonely_id}"))
            .await
            .status(),
        200
    );
    click(&browser, "#customer-delete").await;
    confirm(&browser).await;
    wait_text(&browser, "#progress", "the deletion message", |t| {
        t.contains("deleted")
    })
    .await;
    wait_text(&browser, "#customers-title", "the customers list", |t| {
        t == "Customers"
    })
    .await;
    assert_eq!(
        app.get(&format!("/api/v1/customers/{lonely_id}"))
            .await
            .status(),
        404
    );
    browser.close().await.unwrap();
}

#[tokio::test]
async fn an_import_shows_the_bad_row_then_a_good_file_is_imported() {
    let app = spawn_app().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let files = tempfile::tempdir().unwrap();
    let (p1, p2, p3) = (unique_phone(), unique_phone(), unique_phone());
    let bad = files.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("name,phone,email\nAmina,{p1},\nBad Phone,12345,\nJuma,{p2},juma@example.com\n"),
    )
    .unwrap();
    let good = files.path().join("good.csv");
    std::fs::write(
        &good,
        format!("name,phone,email\nAmina,{p1},\nOtieno,{p3},\nJuma,{p2},juma@example.com\n"),
    )
    .unwrap();
    sign_in(&browser, &app.url).await;

    browser
        .goto(&format!("{}/#/customers", app.url))
        .await
        .unwrap();
    click(&browser, "a[href='#/import']").await;
    wait_text(&browser, "#import-title", "the import page", |t| {
        t.contains("Import")
    })
    .await;
    let input = browser.find(Locator::Css("#import-file")).await.unwrap();
    input.send_keys(bad.to_str().unwrap()).await.unwrap();
    click(&browser, "#import-check").await;
    let summary = wait_text(&browser, "#import-summary", "the dry-run result", |t| {
        !t.is_empty()
    })
    .await;
    assert!(summary.contains("1 of 3 rows"), "{summary}");
    wait_count(&browser, "#import-body tr", "a row per data row", 3).await;
    assert_eq!(
        attr(&browser, "#import-body tr[data-row='2']", "class")
            .await
            .as_deref(),
        Some("bad")
    );
    let row = texts(&browser, "#import-body tr[data-row='2']")
        .await
        .join(" ");
    assert!(row.contains("phone"), "{row}");
    assert_eq!(
        texts(&browser, "#import-body tr[data-row='1'] td:last-child").await,
        ["OK"]
    );
    assert!(
        !browser
            .find(Locator::Css("#import-run"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    let customers: Value = app.get("/api/v1/customers").await.json().await.unwrap();
    assert_eq!(
        customers["items"].as_array().unwrap().len(),
        0,
        "the dry run wrote nothing"
    );
    screenshots(&browser, "import-error").await;

    // The fixed file: checked, then imported.
    let input = browser.find(Locator::Css("#import-file")).await.unwrap();
    input.send_keys(good.to_str().unwrap()).await.unwrap();
    click(&browser, "#import-check").await;
    wait_text(&browser, "#import-summary", "the good dry run", |t| {
        t.contains("3 customers will be created")
    })
    .await;
    screenshots(&browser, "import-checked").await;
    click(&browser, "#import-run").await;
    wait_text(
        &browser,
        "#import-form [data-ok]",
        "the import result",
        |t| t.contains("3 customers imported"),
    )
    .await;
    let customers: Value = app.get("/api/v1/customers").await.json().await.unwrap();
    assert_eq!(customers["items"].as_array().unwrap().len(), 3);
    screenshots(&browser, "import-done").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn failed_sms_show_their_error_and_are_sent_again_after_confirmation() {
    let fake = FakeAt::start().await;
    let url = fake.url.clone();
    let app = spawn_app_with(move |s| {
        s.sms.provider = SmsProviderKind::Africastalking;
        s.sms.africastalking.username = fake_at::USERNAME.into();
        s.sms.africastalking.api_key = fake_at::API_KEY.into();
        s.sms.africastalking.base_url = url;
        s.sms.rate_per_second = 1000;
        s.sms.burst = 1000;
        s.sms.per_recipient_per_minute = 1000;
        // A failed attempt waits ten minutes for its retry: long enough to look at.
        s.sms.retry_base_ms = 600_000;
        s.sms.retry_max_ms = 600_000;
        s.sms.request_timeout_secs = 2;
        s.sms.lease_secs = 3;
    })
    .await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let rejected = app.create_customer(json!({ "name": "Wrong Number" })).await;
    fake.reject_number(rejected["phone"].as_str().unwrap());
    let failed = app
        .create_order(rejected["id"].as_str().unwrap(), json!({ "item": "Chair" }))
        .await;
    let flaky = app
        .create_customer(json!({ "name": "Flaky Network" }))
        .await;
    fake.fail_next(flaky["phone"].as_str().unwrap(), 100, 500);
    let waiting = app
        .create_order(flaky["id"].as_str().unwrap(), json!({ "item": "Table" }))
        .await;
    let notes = |order: &Value| {
        format!(
            "/api/v1/orders/{}/notifications",
            order["id"].as_str().unwrap()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let a: Value = app.get(&notes(&failed)).await.json().await.unwrap();
        let b: Value = app.get(&notes(&waiting)).await.json().await.unwrap();
        if a["items"][0]["status"] == "failed" && !b["items"][0]["next_attempt_at"].is_null() {
            break a["items"][0]["error"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{a} {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sign_in(&browser, &app.url).await;

    click(&browser, "#nav a[data-view=sms]").await;
    let row = wait_text(&browser, "#failed-body tr", "the failed SMS", |t| {
        t.contains(&number(&failed))
    })
    .await;
    assert!(row.contains("Wrong Number"), "{row}");
    let shown = texts(&browser, "#failed-body tr td.error-text").await;
    assert_eq!(
        shown,
        std::slice::from_ref(&error),
        "the error is shown as text"
    );
    let retry = wait_text(
        &browser,
        "#retry-body tr",
        "the message waiting for a retry",
        |t| t.contains(&number(&waiting)),
    )
    .await;
    assert!(retry.contains("500"), "{retry}");
    screenshots(&browser, "failed-sms").await;

    click(&browser, "#failed-body button[data-resend]").await;
    let question = wait_text(&browser, "#confirm-text", "the confirmation", |t| {
        !t.is_empty()
    })
    .await;
    assert!(
        question.contains(&number(&failed)) && question.contains("costs money"),
        "{question}"
    );
    click(&browser, "#confirm-yes").await;
    wait_text(&browser, "#failed-body .ok-text", "the queued note", |t| {
        t.contains("Queued again")
    })
    .await;
    let list: Value = app.get(&notes(&failed)).await.json().await.unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        2,
        "one more SMS, after confirming"
    );
    assert!(
        !browser
            .find(Locator::Css("#failed-body button[data-resend]"))
            .await
            .unwrap()
            .is_enabled()
            .await
            .unwrap()
    );

    // On the order page too: confirmation first, then one more SMS.
    browser
        .goto(&format!(
            "{}/#/orders/{}",
            app.url,
            waiting["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    wait_text(
        &browser,
        "#notifications-body",
        "the retry time on the order page",
        |t| t.contains("next try"),
    )
    .await;
    click(&browser, "#resend").await;
    confirm(&browser).await;
    wait_text(&browser, "#order-ok", "the resend message", |t| {
        t.contains("Queued")
    })
    .await;
    let list: Value = app.get(&notes(&waiting)).await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    screenshots(&browser, "order-detail-resent").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_trend_chart_and_today_counters_show_the_numbers_of_the_api() {
    let app = spawn_app_with(|s| s.business.timezone = "Africa/Nairobi".into()).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let c = app.create_customer(json!({})).await;
    let id = c["id"].as_str().unwrap();
    for (days, n) in [(0, 3), (2, 5), (9, 1), (20, 2)] {
        for _ in 0..n {
            let o = app.create_order(id, json!({ "amount": "250.00" })).await;
            if days > 0 {
                backdate(&app, o["id"].as_str().unwrap(), days).await;
            }
        }
    }
    sign_in(&browser, &app.url).await;
    let api: Value = app.get("/api/v1/stats?days=1").await.json().await.unwrap();
    let today = api["days"][0]["orders"].to_string();
    assert_eq!(today, "3");
    wait_text(&browser, "#count-orders", "today's orders", |t| t == today).await;

    for days in [14, 30] {
        if days == 14 {
            click(&browser, "#nav a[data-view=trend]").await;
        } else {
            click(&browser, "#view-trend [data-days='30']").await;
        }
        wait_count(&browser, "#trend-body tr", "a row per day", days).await;
        wait_count(&browser, "#chart rect.bar.orders", "a bar per day", days).await;
        let stats: Value = app
            .get(&format!("/api/v1/stats?days={days}"))
            .await
            .json()
            .await
            .unwrap();
        for day in stats["days"].as_array().unwrap() {
            let date = day["date"].as_str().unwrap();
            for (series, value) in [
                ("orders", &day["orders"]),
                ("delivered", &day["sms"]["delivered"]),
                ("failed", &day["sms"]["failed"]),
            ] {
                let bar = attr(
                    &browser,
                    &format!("#chart rect[data-date='{date}'][data-series='{series}']"),
                    "data-value",
                )
                .await;
                assert_eq!(bar, Some(value.to_string()), "{date} {series} bar");
                let cell = attr(
                    &browser,
                    &format!("#trend-body tr[data-date='{date}'] [data-{series}]"),
                    &format!("data-{series}"),
                )
                .await;
                assert_eq!(cell, Some(value.to_string()), "{date} {series} cell");
            }
        }
        let total: i64 = stats["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["orders"].as_i64().unwrap())
            .sum();
        assert_eq!(total, if days == 14 { 9 } else { 11 });
        screenshots(&browser, &format!("trend-{days}")).await;
    }
    browser.close().await.unwrap();
}

#[tokio::test]
async fn a_double_click_creates_one_order_and_one_customer() {
    let app = spawn_app().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let c = app.create_customer(json!({ "code": "DOUBLE" })).await;
    sign_in(&browser, &app.url).await;
    let double_click = "const b = document.querySelector(arguments[0]); b.click(); b.click();";

    browser
        .goto(&format!("{}/#/new-order?code=DOUBLE", app.url))
        .await
        .unwrap();
    wait_text(&browser, "#new-order-title", "the order form", |t| {
        t.contains("New order")
    })
    .await;
    fill(&browser, "#order-item", "Clicked twice").await;
    fill(&browser, "#order-amount", "99").await;
    screenshots(&browser, "new-order").await;
    browser
        .execute(double_click, vec![json!("#order-form button[type=submit]")])
        .await
        .unwrap();
    wait_text(
        &browser,
        "#order-form [data-ok]",
        "the order confirmation",
        |t| t.contains("ORD-"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let orders: Value = app
        .get(&format!(
            "/api/v1/customers/{}/orders",
            c["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(orders["items"].as_array().unwrap().len(), 1, "{orders}");

    browser
        .goto(&format!("{}/#/new-customer", app.url))
        .await
        .unwrap();
    wait_text(&browser, "#new-customer-title", "the customer form", |t| {
        t.contains("New customer")
    })
    .await;
    fill(&browser, "#customer-name", "Twice Clicked").await;
    fill(&browser, "#customer-phone", &unique_phone()).await;
    screenshots(&browser, "new-customer").await;
    browser
        .execute(
            double_click,
            vec![json!("#customer-form button[type=submit]")],
        )
        .await
        .unwrap();
    wait_text(
        &browser,
        "#customer-form [data-ok]",
        "the customer confirmation",
        |t| t.contains("Twice Clicked"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found: Value = app
        .get("/api/v1/customers?q=twice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    browser.close().await.unwrap();
}

// ---- roles and the order's history --------------------------------------------------------

const FRONT_DESK: &str = "front-desk-viewer-token";
const WANJIKU: &str = "wanjiku-staff-token-01";
const OWNER: &str = "owner-admin-token-0001";

/// A viewer "Front desk", a staff member "Wanjiku" and an admin "Owner", beside `TOKEN`.
fn named_tokens(s: &mut Settings) {
    for (token, role, name) in [
        (FRONT_DESK, "viewer", "Front desk"),
        (WANJIKU, "staff", "Wanjiku"),
        (OWNER, "admin", "Owner"),
    ] {
        s.auth.tokens.push(TokenEntry::Named(NamedToken {
            token: token.into(),
            role: role.into(),
            name: Some(name.into()),
        }));
    }
}

/// An API request made with `token`.
fn as_token(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    app.client
        .request(method, format!("{}{path}", app.url))
        .bearer_auth(token)
}

/// How many elements matching `css` are displayed.
async fn shown(browser: &Client, css: &str) -> usize {
    let mut n = 0;
    for e in browser.find_all(Locator::Css(css)).await.unwrap() {
        if e.is_displayed().await.unwrap_or(false) {
            n += 1;
        }
    }
    n
}

/// Asserts that no element matching any of `selectors` is displayed.
async fn assert_none_shown(browser: &Client, selectors: &[&str], page: &str) {
    for css in selectors {
        let n = shown(browser, css).await;
        if n > 0 {
            screenshot(browser, &format!("shown-{}", page.replace(' ', "-"))).await;
        }
        assert_eq!(n, 0, "{css} is shown on {page}");
    }
}

/// Waits until `css` matches exactly `n` displayed elements.
async fn wait_shown(browser: &Client, css: &str, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = shown(browser, css).await;
        if found == n {
            return;
        }
        if Instant::now() > deadline {
            screenshot(browser, &format!("timeout-{}", what.replace(' ', "-"))).await;
            panic!("timed out waiting for {n} shown of {css} ({what}); found {found}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The timeline's lines (without their times).
async fn timeline(browser: &Client) -> Vec<String> {
    texts(browser, "#order-history li .what").await
}

/// Every control that changes something, by the ids and selectors the page uses.
const CHANGES: [&str; 21] = [
    "#nav a[data-view=new-order]",
    "#nav a[data-view=new-customer]",
    "#order-actions",
    "#order-actions button",
    "button[data-status]",
    "#resend",
    "#order-delete",
    "#customers-import",
    "a[href='#/import']",
    "#customer-edit",
    "#customer-edit button",
    "#customer-delete",
    "#customer-new-order",
    "#failed-body button",
    "button[data-resend]",
    "#order-form",
    "#customer-form",
    "#import-form",
    "#import-check",
    "#import-run",
    "[data-needs]",
];

/// A customer whose SMS the provider refuses, and their order, once its SMS failed.
async fn failed_order(app: &TestApp, fake: &FakeAt) -> Value {
    let rejected = app.create_customer(json!({ "name": "Wrong Number" })).await;
    fake.reject_number(rejected["phone"].as_str().unwrap());
    let order = app
        .create_order(rejected["id"].as_str().unwrap(), json!({ "item": "Chair" }))
        .await;
    wait_notifications(app, order["id"].as_str().unwrap(), |l| {
        all_have_status(l, "failed")
    })
    .await;
    order
}

#[tokio::test]
async fn a_viewer_sees_no_control_that_changes_anything_and_still_follows_live() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, named_tokens).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let failed = failed_order(&app, &fake).await;
    let amina = app
        .create_customer(json!({ "name": "Amina Widgets", "code": "AMINA" }))
        .await;
    let (cid, phone) = (
        amina["id"].as_str().unwrap(),
        amina["phone"].as_str().unwrap(),
    );
    let order = app.create_order(cid, json!({ "item": "Sofa" })).await;
    let oid = order["id"].as_str().unwrap();
    wait_notifications(&app, oid, |l| all_have_status(l, "sent")).await;
    sign_in_as(&browser, &app.url, FRONT_DESK).await;
    assert_eq!(texts(&browser, "#who").await, ["Front desk"]);
    assert_eq!(texts(&browser, "#who-role").await, ["viewer"]);

    // The orders list: the orders, no way to make one.
    wait_text(&browser, "#orders-body", "the orders", |t| {
        t.contains(&number(&order)) && t.contains(&number(&failed))
    })
    .await;
    assert_eq!(shown(&browser, "#nav a[data-view=orders]").await, 1);
    assert_none_shown(&browser, &CHANGES, "the viewer's orders").await;
    screenshots(&browser, "viewer-orders").await;

    // An order: its details and history, no status buttons, resend or delete.
    browser
        .goto(&format!("{}/#/orders/{oid}", app.url))
        .await
        .unwrap();
    wait_text(&browser, "#order-title", "the order page", |t| {
        t.contains(&number(&order))
    })
    .await;
    wait_text(&browser, "#notifications-body", "the order's SMS", |t| {
        t.contains("sent")
    })
    .await;
    wait_text(&browser, "#order-history", "the history", |t| {
        t.contains("created by API token 1")
    })
    .await;
    wait_count(&browser, "#order-actions button", "no status buttons", 0).await;
    assert_none_shown(&browser, &CHANGES, "the viewer's order").await;
    // A change made elsewhere re-renders the page live, still without controls.
    let r = app
        .patch(
            &format!("/api/v1/orders/{oid}"),
            &json!({ "status": "confirmed" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    wait_text(&browser, "#order-details", "the live status", |t| {
        t.contains("confirmed")
    })
    .await;
    wait_text(
        &browser,
        "#order-history li:last-child .what",
        "the live history line",
        |t| t == "confirmed by API token 1",
    )
    .await;
    wait_count(&browser, "#order-actions button", "no status buttons", 0).await;
    assert_none_shown(&browser, &CHANGES, "the viewer's order after a frame").await;
    screenshots(&browser, "viewer-order").await;

    // The customers, and one customer: read, not edited, imported or deleted.
    browser
        .goto(&format!("{}/#/customers", app.url))
        .await
        .unwrap();
    wait_text(&browser, "#customers-body", "the customers", |t| {
        t.contains("AMINA")
    })
    .await;
    assert_none_shown(&browser, &CHANGES, "the viewer's customers").await;
    browser
        .goto(&format!("{}/#/customers/{cid}", app.url))
        .await
        .unwrap();
    wait_text(
        &browser,
        "#customer-details",
        "the customer's details",
        |t| t.contains(phone),
    )
    .await;
    wait_text(&browser, "#customer-orders-body", "their orders", |t| {
        t.contains(&number(&order))
    })
    .await;
    assert_none_shown(&browser, &CHANGES, "the viewer's customer").await;
    screenshots(&browser, "viewer-customer").await;

    // The failed SMS: shown, with no "Send again".
    click(&browser, "#nav a[data-view=sms]").await;
    wait_text(&browser, "#failed-body", "the failed SMS", |t| {
        t.contains(&number(&failed))
    })
    .await;
    wait_count(&browser, "#failed-body button", "no Send again", 0).await;
    assert_none_shown(&browser, &CHANGES, "the viewer's SMS page").await;
    screenshots(&browser, "viewer-sms").await;

    // The forms' own addresses say what is needed, and show no form.
    for (view, what) in [
        ("new-order", "Creating orders"),
        ("new-customer", "Creating customers"),
        ("import", "Importing customers"),
    ] {
        browser
            .goto(&format!("{}/#/{view}", app.url))
            .await
            .unwrap();
        wait_text(
            &browser,
            &format!("#view-{view} [data-below=staff]"),
            "the role note",
            |t| t.contains(what) && t.contains("staff role"),
        )
        .await;
        assert_none_shown(&browser, &CHANGES, view).await;
    }

    // Live updates still arrive in the list.
    browser
        .goto(&format!("{}/#/orders", app.url))
        .await
        .unwrap();
    wait_text(&browser, "#orders-body", "the orders again", |t| {
        t.contains(&number(&order))
    })
    .await;
    let live = app.create_order(cid, json!({ "item": "Made live" })).await;
    wait_text(
        &browser,
        "#orders-body tr:first-child",
        "the live order",
        |t| t.contains(&number(&live)),
    )
    .await;
    assert_none_shown(&browser, &CHANGES, "the viewer's orders after a frame").await;

    // The page believes its role went up (as if it changed meanwhile): the server still
    // refuses, the page says why, and it follows the role the server names.
    browser
        .execute(
            "state.me.role = 'staff'; showMe(state.me); location.hash = '#/orders/' + arguments[0];",
            vec![json!(oid)],
        )
        .await
        .unwrap();
    wait_shown(
        &browser,
        "#order-actions button[data-status=shipped]",
        "a status button",
        1,
    )
    .await;
    click(&browser, "#order-actions button[data-status=shipped]").await;
    let refused = wait_text(&browser, "#order-error", "the refusal", |t| !t.is_empty()).await;
    assert!(refused.contains("needs the staff role"), "{refused}");
    wait_text(&browser, "#who-role", "the role from the server", |t| {
        t == "viewer"
    })
    .await;
    wait_shown(
        &browser,
        "#order-actions button",
        "the buttons hidden again",
        0,
    )
    .await;
    let now: Value = app
        .get(&format!("/api/v1/orders/{oid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        now["status"], "confirmed",
        "a refused change changes nothing"
    );
    screenshots(&browser, "viewer-refused").await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn staff_change_and_resend_but_only_an_admin_deletes() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, named_tokens).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let failed = failed_order(&app, &fake).await;
    let lonely = app
        .create_customer(json!({ "name": "Nobody Orders", "code": "NOBODY" }))
        .await;
    let lonely_id = lonely["id"].as_str().unwrap();
    let amina = app
        .create_customer(json!({ "name": "Amina Widgets" }))
        .await;
    let order = app
        .create_order(amina["id"].as_str().unwrap(), json!({ "item": "Sofa" }))
        .await;
    let oid = order["id"].as_str().unwrap();
    wait_notifications(&app, oid, |l| all_have_status(l, "sent")).await;
    let order_page = format!("{}/#/orders/{oid}", app.url);
    let customer_page = format!("{}/#/customers/{lonely_id}", app.url);

    // Staff: create, change, resend and import, no delete.
    sign_in_as(&browser, &app.url, WANJIKU).await;
    assert_eq!(texts(&browser, "#who-role").await, ["staff"]);
    wait_shown(
        &browser,
        "#nav a[data-view=new-order]",
        "the new order link",
        1,
    )
    .await;
    assert_eq!(shown(&browser, "#nav a[data-view=new-customer]").await, 1);
    browser.goto(&order_page).await.unwrap();
    wait_shown(&browser, "#order-actions button", "the status buttons", 2).await;
    assert_eq!(shown(&browser, "#resend").await, 1);
    assert_none_shown(&browser, &["#order-delete"], "the staff's order").await;
    screenshots(&browser, "staff-order").await;
    browser.goto(&customer_page).await.unwrap();
    wait_text(&browser, "#customer-title", "the customer page", |t| {
        t.contains("Nobody Orders")
    })
    .await;
    assert_eq!(
        shown(&browser, "#customer-edit button[type=submit]").await,
        1
    );
    assert_eq!(shown(&browser, "#customer-new-order").await, 1);
    assert_none_shown(
        &browser,
        &["#customer-delete", "#customer-details"],
        "the staff's customer",
    )
    .await;
    click(&browser, "#nav a[data-view=customers]").await;
    wait_shown(&browser, "#customers-import", "the import link", 1).await;
    click(&browser, "#customers-import").await;
    wait_shown(&browser, "#import-check", "the import form", 1).await;
    click(&browser, "#nav a[data-view=sms]").await;
    wait_text(&browser, "#failed-body", "the failed SMS", |t| {
        t.contains(&number(&failed))
    })
    .await;
    wait_shown(
        &browser,
        "#failed-body button[data-resend]",
        "Send again",
        1,
    )
    .await;
    click(&browser, "#nav a[data-view=new-order]").await;
    wait_shown(
        &browser,
        "#order-form button[type=submit]",
        "the order form",
        1,
    )
    .await;
    assert_none_shown(&browser, &["[data-needs=admin]"], "the staff's new order").await;

    // Admin: delete too.
    click(&browser, "#sign-out").await;
    sign_in_as(&browser, &app.url, OWNER).await;
    assert_eq!(texts(&browser, "#who").await, ["Owner"]);
    assert_eq!(texts(&browser, "#who-role").await, ["admin"]);
    browser.goto(&customer_page).await.unwrap();
    wait_shown(&browser, "#customer-delete", "the delete button", 1).await;
    browser.goto(&order_page).await.unwrap();
    wait_shown(&browser, "#order-actions button", "the status buttons", 2).await;
    wait_shown(&browser, "#order-delete", "the delete button", 1).await;
    assert_eq!(shown(&browser, "#resend").await, 1);
    screenshots(&browser, "admin-order").await;
    click(&browser, "#order-delete").await;
    confirm(&browser).await;
    wait_text(&browser, "#progress", "the deletion message", |t| {
        t.contains("deleted")
    })
    .await;
    wait_text(&browser, "#orders-title", "the orders list", |t| {
        t == "Orders"
    })
    .await;
    assert_eq!(
        app.get(&format!("/api/v1/orders/{oid}")).await.status(),
        404
    );
    // The deleted order's page still tells its story.
    browser.goto(&order_page).await.unwrap();
    wait_text(&browser, "#order-error", "the missing order", |t| {
        t.contains("does not exist")
    })
    .await;
    wait_text(
        &browser,
        "#order-history li:last-child .what",
        "the deletion in the history",
        |t| t == "deleted by Owner",
    )
    .await;
    assert_none_shown(
        &browser,
        &["#order-delete", "#resend", "#order-actions button"],
        "the deleted order",
    )
    .await;
    browser.close().await.unwrap();
}

#[tokio::test]
async fn the_order_page_shows_its_history_as_a_timeline_and_follows_it_live() {
    let fake = FakeAt::start().await;
    let app = at_app(&fake, named_tokens).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser(&profile).await;
    let staff = |method: reqwest::Method, path: &str| as_token(&app, WANJIKU, method, path);
    let customer: Value = staff(reqwest::Method::POST, "/api/v1/customers")
        .json(&json!({ "name": "Amina", "phone": unique_phone() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order: Value = staff(reqwest::Method::POST, "/api/v1/orders")
        .json(&json!({ "customer_id": customer["id"], "item": "Laptop", "amount": "1200.00" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let oid = order["id"].as_str().unwrap();
    let sent = wait_notifications(&app, oid, |l| all_have_status(l, "sent")).await;
    let provider_id = sent[0]["provider_message_id"].as_str().unwrap();
    let r = report(&app, Some(SECRET), &delivery(provider_id, "Success")).await;
    assert_eq!(r.status(), 200);
    wait_notifications(&app, oid, |l| all_have_status(l, "delivered")).await;
    let patch = async |status: &str| {
        let r = staff(reqwest::Method::PATCH, &format!("/api/v1/orders/{oid}"))
            .json(&json!({ "status": status }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{status}");
    };
    patch("confirmed").await;

    sign_in_as(&browser, &app.url, OWNER).await;
    browser
        .goto(&format!("{}/#/orders/{oid}", app.url))
        .await
        .unwrap();
    wait_count(&browser, "#order-history li", "the history", 5).await;
    assert_eq!(
        timeline(&browser).await,
        [
            "created by Wanjiku",
            "SMS sending",
            "SMS sent",
            "SMS delivered (Africa's Talking)",
            "confirmed by Wanjiku",
        ]
    );
    // Each line is text in a list, with a machine-readable time.
    assert_eq!(
        attr(&browser, "#order-history", "aria-labelledby")
            .await
            .as_deref(),
        Some("history-title")
    );
    let at = attr(&browser, "#order-history li:first-child time", "datetime")
        .await
        .unwrap();
    assert!(
        at.starts_with(&chrono::Utc::now().format("%Y-").to_string()),
        "{at}"
    );
    let first = texts(&browser, "#order-history li:first-child").await;
    assert!(
        first[0].ends_with("created by Wanjiku") && first[0].len() > "created by Wanjiku".len(),
        "a time before the line: {first:?}"
    );

    // A change made elsewhere while the page is open, then one made here: both appear live.
    patch("shipped").await;
    wait_count(&browser, "#order-history li", "the live change", 6).await;
    wait_text(&browser, "#order-details", "the shipped status", |t| {
        t.contains("shipped")
    })
    .await;
    click(&browser, "#order-actions button[data-status=delivered]").await;
    wait_count(&browser, "#order-history li", "the change made here", 7).await;
    let lines = timeline(&browser).await;
    assert_eq!(lines[5..], ["shipped by Wanjiku", "delivered by Owner"]);
    screenshots(&browser, "order-timeline").await;
    browser.close().await.unwrap();
}
