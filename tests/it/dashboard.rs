//! The dashboard in a real headless Chromium (Debian's chromium + chromium-driver), driven
//! over WebDriver with fantoccini. Screenshots of the main views are saved under
//! `target/tmp/screenshots/` for a reviewer.

use crate::support::*;
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

/// Waits until `css` matches an element whose text satisfies `pred`; returns the text.
async fn wait_text(browser: &Client, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
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
    browser.goto(url).await.expect("open the dashboard");
    wait_text(browser, "#view-sign-in h1", "the sign-in page", |t| {
        t.contains("Sign in")
    })
    .await;
    fill(browser, "#token", TOKEN).await;
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
