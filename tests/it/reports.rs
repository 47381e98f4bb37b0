//! Export, import and stats (CONTRACT.md "Export, import and stats"), black-box over HTTP.

use crate::support::live::{connect, hello, next_n};
use crate::support::*;
use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use duka::store::entities::{notification, order};
use reqwest::Method;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORDER_HEADER: &str = "order_number,created_at,status,customer_code,customer_name,phone,item,quantity,amount,currency,sms_status";

/// Status, headers and records of a CSV answer (the header row included).
async fn csv_of(
    r: reqwest::Response,
) -> (u16, reqwest::header::HeaderMap, String, Vec<Vec<String>>) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let records = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (status, headers, text, records)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn today_in(tz: Tz) -> NaiveDate {
    Utc::now().with_timezone(&tz).date_naive()
}

async fn import(app: &TestApp, query: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.request(Method::POST, &format!("/api/v1/customers/import{query}"))
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .expect("POST import")
}

async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    scalar(db, &format!("SELECT COUNT(*) FROM {table}")).await
}

/// Moves an order (and its notifications) to `at`, as if it had been created then.
async fn backdate(db: &DatabaseConnection, order_id: &str, at: i64) {
    let id = uuid::Uuid::parse_str(order_id).unwrap();
    order::Entity::update_many()
        .col_expr(order::Column::CreatedAt, Expr::value(at))
        .filter(order::Column::Id.eq(id))
        .exec(db)
        .await
        .unwrap();
    notification::Entity::update_many()
        .col_expr(notification::Column::CreatedAt, Expr::value(at))
        .filter(notification::Column::OrderId.eq(id))
        .exec(db)
        .await
        .unwrap();
}

fn instant(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

/// Waits until the order's SMS has been sent (the log provider sends at once).
async fn sms_sent(app: &TestApp, order: &Value) {
    let path = format!("/api/v1/orders/{}", order["id"].as_str().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now: Value = app.get(&path).await.json().await.unwrap();
        if now["notification"]["status"] == "sent" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the SMS was not sent: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// ---- export ----------------------------------------------------------------------------

#[tokio::test]
async fn order_export_quotes_guards_formulas_and_follows_the_filters() {
    let app = spawn_app_with(|s| s.business.timezone = "Africa/Nairobi".into()).await;
    let tricky = app
        .create_customer(json!({ "name": "Doe, \"Jr\" =HYPERLINK(1)", "code": "DOE-1" }))
        .await;
    let plain = app.create_customer(json!({ "code": "PLAIN-1" })).await;
    let id = |c: &Value| c["id"].as_str().unwrap().to_string();
    let formula = app
        .create_order(
            &id(&tricky),
            json!({ "item": "=SUM(A1:A9)", "amount": "10.50" }),
        )
        .await;
    let at = app
        .create_order(
            &id(&tricky),
            json!({ "item": "@cmd", "amount": 3, "currency": "USD" }),
        )
        .await;
    let minus = app
        .create_order(&id(&plain), json!({ "item": "-2+3", "quantity": 4 }))
        .await;
    let confirmed = app
        .create_order(&id(&plain), json!({ "item": "Laptop, 15\"" }))
        .await;
    let r = app
        .patch(
            &format!("/api/v1/orders/{}", confirmed["id"].as_str().unwrap()),
            &json!({ "status": "confirmed" }),
        )
        .await;
    assert_eq!(r.status(), 200);

    for o in [&formula, &at, &minus, &confirmed] {
        sms_sent(&app, o).await;
    }
    let (status, headers, text, records) = csv_of(app.get("/api/v1/orders/export.csv").await).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "content-type"), "text/csv; charset=utf-8");
    let today = today_in(Tz::Africa__Nairobi).format("%Y%m%d");
    assert_eq!(
        header(&headers, "content-disposition"),
        format!("attachment; filename=\"orders-{today}.csv\"")
    );
    assert!(text.starts_with(&format!("{ORDER_HEADER}\r\n")), "{text}");
    assert!(text.ends_with("\r\n"));
    assert_eq!(records.len(), 5, "{text}");
    // Newest first; every cell that a spreadsheet would run starts with a quote.
    let numbers: Vec<&str> = records[1..].iter().map(|r| r[0].as_str()).collect();
    let expected: Vec<&str> = [&confirmed, &minus, &at, &formula]
        .iter()
        .map(|o| o["order_number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, expected);
    let row = |o: &Value| {
        records
            .iter()
            .find(|r| r[0] == o["order_number"].as_str().unwrap())
            .unwrap()
            .clone()
    };
    let f = row(&formula);
    assert_eq!(
        f,
        [
            formula["order_number"].as_str().unwrap(),
            formula["created_at"].as_str().unwrap(),
            "pending",
            "DOE-1",
            "Doe, \"Jr\" =HYPERLINK(1)",
            &format!("'{}", tricky["phone"].as_str().unwrap()),
            "'=SUM(A1:A9)",
            "1",
            "10.50",
            "KES",
            "sent",
        ]
    );
    // RFC 4180: the name with a comma and quotes is quoted, its quotes doubled.
    assert!(
        text.contains(",\"Doe, \"\"Jr\"\" =HYPERLINK(1)\","),
        "{text}"
    );
    assert!(text.contains(",\"Laptop, 15\"\"\","), "{text}");
    assert_eq!(row(&at)[6], "'@cmd");
    assert_eq!(row(&at)[9], "USD");
    assert_eq!(row(&minus)[6], "'-2+3");
    assert_eq!(row(&minus)[7], "4");
    assert_eq!(row(&confirmed)[2], "confirmed");

    // The filters of the list, without paging.
    let numbers_of = |records: Vec<Vec<String>>| -> Vec<String> {
        records[1..].iter().map(|r| r[0].clone()).collect()
    };
    let (_, _, _, r) = csv_of(app.get("/api/v1/orders/export.csv?status=confirmed").await).await;
    assert_eq!(numbers_of(r), [confirmed["order_number"].as_str().unwrap()]);
    let (_, _, _, r) = csv_of(
        app.get(&format!(
            "/api/v1/orders/export.csv?customer_id={}",
            id(&tricky)
        ))
        .await,
    )
    .await;
    assert_eq!(
        numbers_of(r),
        [
            at["order_number"].as_str().unwrap(),
            formula["order_number"].as_str().unwrap()
        ]
    );
    let (_, _, _, r) = csv_of(app.get("/api/v1/orders/export.csv?q=laptop").await).await;
    assert_eq!(numbers_of(r), [confirmed["order_number"].as_str().unwrap()]);
    // The first order moves to three days ago: a date range in the business time zone.
    let db = app.db.connect().await;
    let days_ago = today_in(Tz::Africa__Nairobi) - chrono::Days::new(3);
    let local_noon = Tz::Africa__Nairobi
        .from_local_datetime(&days_ago.and_hms_opt(12, 0, 0).unwrap())
        .unwrap();
    backdate(
        &db,
        formula["id"].as_str().unwrap(),
        local_noon.timestamp_millis(),
    )
    .await;
    let (_, _, _, r) = csv_of(
        app.get(&format!(
            "/api/v1/orders/export.csv?start_date={days_ago}&end_date={days_ago}"
        ))
        .await,
    )
    .await;
    assert_eq!(numbers_of(r), [formula["order_number"].as_str().unwrap()]);
    let (_, _, _, r) = csv_of(
        app.get("/api/v1/orders/export.csv?q=nothing-matches-this")
            .await,
    )
    .await;
    assert_eq!(r.len(), 1, "only the header row");

    // Bad filters are 400 naming the parameter, as for the list.
    assert_problem(
        app.get("/api/v1/orders/export.csv?start_date=soon").await,
        400,
        &["start_date"],
    )
    .await;
    assert_problem(
        app.get("/api/v1/orders/export.csv?status=lost").await,
        400,
        &["status"],
    )
    .await;
    assert_problem(
        app.get("/api/v1/orders/export.csv?customer_id=").await,
        400,
        &["customer_id"],
    )
    .await;
    let r = app
        .client
        .get(format!("{}/api/v1/orders/export.csv", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn customer_export_is_csv_with_the_search_applied() {
    let app = spawn_app().await;
    let word = marker();
    let a = app
        .create_customer(json!({ "name": format!("Amina {word}"), "email": "amina@example.com", "code": "AMINA-1" }))
        .await;
    let b = app
        .create_customer(json!({ "name": format!("=cmd|' /C calc'!A0 {word}") }))
        .await;
    app.create_customer(json!({ "name": "Someone else" })).await;
    let (status, headers, text, records) = csv_of(
        app.get(&format!("/api/v1/customers/export.csv?q={word}"))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "content-type"), "text/csv; charset=utf-8");
    let today = today_in(Tz::UTC).format("%Y%m%d");
    assert_eq!(
        header(&headers, "content-disposition"),
        format!("attachment; filename=\"customers-{today}.csv\"")
    );
    assert!(
        text.starts_with("code,name,phone,email,created_at\r\n"),
        "{text}"
    );
    assert_eq!(
        records[1..],
        [
            vec![
                b["code"].as_str().unwrap().to_string(),
                format!("'=cmd|' /C calc'!A0 {word}"),
                format!("'{}", b["phone"].as_str().unwrap()),
                String::new(),
                b["created_at"].as_str().unwrap().to_string(),
            ],
            vec![
                "AMINA-1".to_string(),
                format!("Amina {word}"),
                format!("'{}", a["phone"].as_str().unwrap()),
                "amina@example.com".to_string(),
                a["created_at"].as_str().unwrap().to_string(),
            ],
        ]
    );
    let (_, _, _, all) = csv_of(app.get("/api/v1/customers/export.csv").await).await;
    assert_eq!(all.len(), 4);
    assert_problem(
        app.get("/api/v1/customers/export.csv?q=").await,
        400,
        &["q"],
    )
    .await;
}

/// Memory is bounded by checking that the body streams before the last page is read: the
/// client reads the first bytes of a 20,000-row export through a small receive window, the
/// oldest order (the last row) is then deleted, and the rest of the body no longer has it.
/// An export built whole before sending (memory growing with the rows) would still list it.
/// The rows are large (~500 bytes) so that the 10 MB body cannot sit in the socket buffers
/// (at most 4 MiB on the sending side, 32 KiB on the receiving side here).
#[tokio::test]
async fn a_20000_row_export_streams_page_by_page() {
    const ROWS: usize = 20_000;
    let app = spawn_app().await;
    let long_name = format!("Customer {}", "n".repeat(190));
    let c = app.create_customer(json!({ "name": long_name })).await;
    let customer_id = uuid::Uuid::parse_str(c["id"].as_str().unwrap()).unwrap();
    let db = app.db.connect().await;
    let base = Utc::now().timestamp_millis() - ROWS as i64 * 1000;
    let mut ids = Vec::with_capacity(ROWS);
    let mut rows = Vec::with_capacity(ROWS);
    for i in 0..ROWS {
        let at = base + i as i64 * 1000;
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (at / 1000) as u64,
            ((at % 1000) * 1_000_000) as u32,
        ));
        ids.push(id);
        rows.push(order::ActiveModel {
            id: sea_orm::Set(id),
            order_number: sea_orm::Set(format!("ORD-BULK-{i:06}")),
            customer_id: sea_orm::Set(customer_id),
            item: sea_orm::Set(format!("{i:06} {}", "x".repeat(190))),
            quantity: sea_orm::Set(1),
            amount_minor: sea_orm::Set(100 + i as i64),
            currency: sea_orm::Set("KES".into()),
            status: sea_orm::Set(duka::domain::order::OrderStatus::Pending),
            created_at: sea_orm::Set(at),
            updated_at: sea_orm::Set(at),
        });
    }
    while !rows.is_empty() {
        let chunk: Vec<_> = rows.drain(..rows.len().min(1000)).collect();
        order::Entity::insert_many(chunk)
            .exec_without_returning(&db)
            .await
            .unwrap();
    }

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/orders/export.csv HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n",
                app.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while received.len() < 64 * 1024 {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the body ended early");
        received.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&received[..received.len().min(1024)]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );

    let oldest = ids[0];
    let r = app.delete(&format!("/api/v1/orders/{oldest}")).await;
    assert_eq!(r.status(), 204);

    stream.read_to_end(&mut received).await.unwrap();
    let split = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = dechunk(&received[split..]);
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(lines[0], ORDER_HEADER);
    assert_eq!(
        lines.len(),
        ROWS,
        "the header and every order but the deleted one"
    );
    assert!(
        lines[1].starts_with(&format!("ORD-BULK-{:06},", ROWS - 1)),
        "{}",
        lines[1]
    );
    assert!(
        !text.contains("ORD-BULK-000000,"),
        "the oldest order was read before it was deleted"
    );
    assert!(
        lines[ROWS - 1].starts_with("ORD-BULK-000001,"),
        "{}",
        lines[ROWS - 1]
    );
}

/// The payload of a chunked body, which must end with the last (empty) chunk.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .expect("a hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

// ---- import ----------------------------------------------------------------------------

#[tokio::test]
async fn an_import_creates_every_row_with_events_after_a_dry_run_that_writes_nothing() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let (p1, p2, p3) = (unique_phone(), unique_phone(), unique_phone());
    // Columns in another order, a byte-order mark, a national number, quoting, an empty
    // optional cell, a guarded cell as the exports write it, upper-cased header names.
    let national = format!("0{}", &p2[4..]);
    let file = format!(
        "\u{feff}Phone,EMAIL,name,code\r\n'{p1},amina@example.com,\"Njeri, Amina\",amina-1\r\n{national},,Otieno,\r\n\"{p3}\",\"juma@example.com\",\"Juma \"\"JJ\"\"\",JUMA_2\r\n"
    );
    let before = count(&db, "customers").await;
    let r = import(&app, "?dry_run=true", file.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "would_create": 3 })
    );
    assert_eq!(
        count(&db, "customers").await,
        before,
        "a dry run writes nothing"
    );

    let mut ws = connect(&app, "?types=customer.created").await;
    hello(&mut ws).await;
    let r = import(&app, "", file.clone()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "created": 3 }));
    let events = next_n(&mut ws, 3).await;
    let names: BTreeSet<&str> = events
        .iter()
        .map(|e| e["data"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["Njeri, Amina", "Otieno", "Juma \"JJ\""])
    );
    assert!(events.iter().all(|e| e["type"] == "customer.created"));

    let find = |phone: String| {
        let app = &app;
        async move {
            let page: Value = app
                .get(&format!(
                    "/api/v1/customers?q={}",
                    phone.replace('+', "%2B")
                ))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
            page["items"][0].clone()
        }
    };
    let amina = find(p1.clone()).await;
    assert_eq!(amina["name"], "Njeri, Amina");
    assert_eq!(amina["code"], "AMINA-1");
    assert_eq!(amina["email"], "amina@example.com");
    let otieno = find(p2.clone()).await;
    assert_eq!(otieno["phone"], p2, "stored in E.164");
    assert!(
        otieno["code"].as_str().unwrap().starts_with("CUST-"),
        "generated: {otieno}"
    );
    assert_eq!(otieno["email"], Value::Null);
    assert_eq!(find(p3).await["code"], "JUMA_2");

    // The same file again: every row is taken now, nothing is written.
    let r = import(&app, "", file).await;
    let problem = assert_problem(
        r,
        422,
        &[
            "row 1: phone",
            "row 1: code",
            "row 2: phone",
            "row 3: phone",
            "row 3: code",
        ],
    )
    .await;
    assert!(
        problem["errors"]["row 2: code"].is_null(),
        "row 2 had no code: {problem}"
    );
    assert_eq!(count(&db, "customers").await, before + 3);
}

#[tokio::test]
async fn a_bad_row_of_any_kind_is_named_and_nothing_is_written() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let existing = app.create_customer(json!({ "code": "TAKEN-1" })).await;
    let taken_phone = existing["phone"].as_str().unwrap();
    let (a, b, c) = (unique_phone(), unique_phone(), unique_phone());
    let file = [
        "name,phone,code,email".to_string(),
        format!("Good One,{a},GOOD-1,good@example.com"), // 1: fine
        format!("   ,{b},,"),                            // 2: empty name
        "Bad Phone,12345,,".to_string(),                 // 3: phone
        format!("Bad Code,{c},x,"),                      // 4: code
        format!("Bad Mail,{},,not-an-email", unique_phone()), // 5: email
        format!("Twin,{a},,"),                           // 6: phone of row 1
        format!("Twin Code,{},good-1,", unique_phone()), // 7: code of row 1
        format!("Old Phone,{taken_phone},,"),            // 8: taken phone
        format!("Old Code,{},taken-1,", unique_phone()), // 9: taken code
        format!("Short,{}", unique_phone()),             // 10: too few fields
        format!("Long,{},,,extra", unique_phone()),      // 11: too many fields
        format!("Nul\u{0}Name,{},,", unique_phone()),    // 12: control character
    ]
    .join("\n");
    let before = count(&db, "customers").await;
    for query in ["", "?dry_run=true"] {
        let problem = assert_problem(
            import(&app, query, file.clone()).await,
            422,
            &[
                "row 2: name",
                "row 3: phone",
                "row 4: code",
                "row 5: email",
                "row 6: phone",
                "row 7: code",
                "row 8: phone",
                "row 9: code",
                "row 10",
                "row 11",
                "row 12: name",
            ],
        )
        .await;
        let errors = problem["errors"].as_object().unwrap();
        assert!(!errors.keys().any(|k| k.starts_with("row 1:")), "{problem}");
        assert_eq!(errors.len(), 11, "{problem}");
        assert!(
            errors["row 6: phone"][0]
                .as_str()
                .unwrap()
                .contains("row 1"),
            "{problem}"
        );
        assert!(
            errors["row 8: phone"][0]
                .as_str()
                .unwrap()
                .contains("already exists"),
            "{problem}"
        );
        assert!(
            errors["row 10"][0].as_str().unwrap().contains("2 fields"),
            "{problem}"
        );
    }
    assert_eq!(count(&db, "customers").await, before, "nothing was written");

    // The header: unknown, repeated and missing columns.
    let p = assert_problem(
        import(&app, "", "name,phone,nickname\nA,+254711000000,x\n").await,
        422,
        &["header"],
    )
    .await;
    assert!(
        p["errors"]["header"][0]
            .as_str()
            .unwrap()
            .contains("nickname"),
        "{p}"
    );
    let p = assert_problem(
        import(&app, "", "name,name,phone\n").await,
        422,
        &["header"],
    )
    .await;
    assert!(
        p["errors"]["header"][0].as_str().unwrap().contains("twice"),
        "{p}"
    );
    let p = assert_problem(
        import(&app, "", "name,email\nA,a@example.com\n").await,
        422,
        &["header"],
    )
    .await;
    assert!(
        p["errors"]["header"][0].as_str().unwrap().contains("phone"),
        "{p}"
    );
    // The file: no rows, not UTF-8, empty.
    assert_problem(import(&app, "", "name,phone\r\n").await, 422, &["file"]).await;
    assert_problem(
        import(&app, "", b"name,phone\nJos\xe9,+254711000001\n".to_vec()).await,
        422,
        &["file"],
    )
    .await;
    assert_problem(import(&app, "", "").await, 422, &["file"]).await;
    // The request: the wrong type, a bad dry_run.
    let r = app
        .request(Method::POST, "/api/v1/customers/import")
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_problem(r, 415, &[]).await;
    let r = app
        .request(Method::POST, "/api/v1/customers/import")
        .header("content-type", "text/csv; charset=latin1")
        .body("name,phone\n")
        .send()
        .await
        .unwrap();
    assert_problem(r, 415, &[]).await;
    assert_problem(
        import(&app, "?dry_run=yes", "name,phone\n").await,
        400,
        &["dry_run"],
    )
    .await;
    assert_eq!(count(&db, "customers").await, before);
    // Once fixed, the good row alone goes in.
    let r = import(
        &app,
        "",
        format!("name,phone,code,email\nGood One,{a},GOOD-1,good@example.com\n"),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(count(&db, "customers").await, before + 1);
}

#[tokio::test]
async fn imports_are_limited_to_5_mib_and_50000_rows() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let rows = |n: usize| {
        let mut file = String::from("name,phone\n");
        for i in 0..n {
            // Valid, distinct Kenyan mobile numbers.
            file.push_str(&format!("Customer {i},+2547{:08}\n", 10_000_000 + i));
        }
        file
    };
    let exactly = rows(50_000);
    assert!(exactly.len() < 5 * 1024 * 1024);
    let r = import(&app, "?dry_run=true", exactly).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "would_create": 50_000 })
    );
    let p = assert_problem(import(&app, "", rows(50_001)).await, 413, &[]).await;
    assert!(p["detail"].as_str().unwrap().contains("50000 rows"), "{p}");
    let mut big = String::from("name,phone\n");
    while big.len() <= 5 * 1024 * 1024 {
        big.push_str(&format!("{},+254711000000\n", "x".repeat(180)));
    }
    for chunked in [false, true] {
        // Declared too long, or (chunked) found too long while reading.
        let answer = raw_import(&app, big.clone().into_bytes(), chunked).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("application/problem+json") && answer.contains("5 MiB"),
            "{answer}"
        );
    }
    assert_eq!(count(&db, "customers").await, 0);

    // 10,000 rows go in whole, as one transaction with one event each.
    let r = import(&app, "", rows(10_000)).await;
    assert_eq!(r.status(), 201);
    assert_eq!(count(&db, "customers").await, 10_000);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM events WHERE kind = 'customer.created'"
        )
        .await,
        10_000
    );
}

/// Posts `body` to the import over a raw connection, declaring its length or in 64 KiB
/// chunks; the raw answer. The server may answer (and close) before the whole body is sent,
/// which a client such as reqwest reports as a broken pipe instead of the answer.
async fn raw_import(app: &TestApp, body: Vec<u8>, chunked: bool) -> String {
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST /api/v1/customers/import HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\n{framing}\r\nConnection: close\r\n\r\n",
        app.addr
    );
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            if chunked {
                write
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
            }
            write.write_all(chunk).await?;
            if chunked {
                write.write_all(b"\r\n").await?;
            }
        }
        if chunked {
            write.write_all(b"0\r\n\r\n").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let _ = read.read_to_end(&mut answer).await;
    let _ = writer.await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test]
async fn two_imports_racing_for_one_phone_create_it_once() {
    let app = spawn_app().await;
    let db = app.db.connect().await;
    let shared = unique_phone();
    let file = |rows: usize| {
        let mut f = String::from("name,phone\n");
        for _ in 0..rows {
            f.push_str(&format!("Someone,{}\n", unique_phone()));
        }
        f.push_str(&format!("Shared,{shared}\n"));
        f
    };
    let (one, two) = (file(300), file(300));
    let (a, b) = tokio::join!(import(&app, "", one), import(&app, "", two));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 422], "exactly one import wins");
    let loser = if a.status() == 422 { a } else { b };
    assert_problem(loser, 422, &["row 301: phone"]).await;
    assert_eq!(
        count(&db, "customers").await,
        301,
        "the losing import wrote nothing"
    );
}

// ---- stats -----------------------------------------------------------------------------

#[tokio::test]
async fn stats_count_days_in_the_business_time_zone() {
    let tz = Tz::Africa__Nairobi;
    let app = spawn_app_with(|s| s.business.timezone = "Africa/Nairobi".into()).await;
    let db = app.db.connect().await;
    let c = app.create_customer(json!({})).await;
    let cid = c["id"].as_str().unwrap();
    let today = today_in(tz);
    let day = |back: u64| today - chrono::Days::new(back);
    let utc = |d: NaiveDate, hms: &str| instant(&format!("{d}T{hms}Z"));
    // 22:30 UTC yesterday is 01:30 today in Nairobi; 20:30 UTC is still yesterday (23:30).
    let late = app.create_order(cid, json!({ "amount": "100.00" })).await;
    backdate(&db, late["id"].as_str().unwrap(), utc(day(1), "22:30:00")).await;
    let evening = app.create_order(cid, json!({ "amount": "40.25" })).await;
    backdate(
        &db,
        evening["id"].as_str().unwrap(),
        utc(day(1), "20:30:00"),
    )
    .await;
    // Two currencies on one day, three days ago; one of them cancelled.
    for (amount, currency) in [("10.00", "KES"), ("2.50", "USD"), ("7.25", "USD")] {
        let o = app
            .create_order(cid, json!({ "amount": amount, "currency": currency }))
            .await;
        backdate(&db, o["id"].as_str().unwrap(), utc(day(3), "09:00:00")).await;
        if amount == "7.25" {
            let r = app
                .patch(
                    &format!("/api/v1/orders/{}", o["id"].as_str().unwrap()),
                    &json!({ "status": "cancelled" }),
                )
                .await;
            assert_eq!(r.status(), 200);
        }
    }
    // Out of the window: eight days ago.
    let old = app.create_order(cid, json!({})).await;
    backdate(&db, old["id"].as_str().unwrap(), utc(day(8), "12:00:00")).await;

    let stats: Value = app.get("/api/v1/stats?days=7").await.json().await.unwrap();
    assert_eq!(stats["timezone"], "Africa/Nairobi");
    let days = stats["days"].as_array().unwrap();
    let dates: Vec<String> = (0..7).rev().map(|b| day(b).to_string()).collect();
    assert_eq!(
        days.iter()
            .map(|d| d["date"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        dates
    );
    let on = |back: usize| &days[6 - back];
    assert_eq!(on(0)["orders"], 1, "{stats}");
    assert_eq!(on(0)["amount"], json!({ "KES": "100.00" }));
    assert_eq!(on(1)["orders"], 1);
    assert_eq!(on(1)["amount"], json!({ "KES": "40.25" }));
    assert_eq!(on(3)["orders"], 3);
    assert_eq!(on(3)["amount"], json!({ "KES": "10.00", "USD": "9.75" }));
    for back in [2, 4, 5, 6] {
        assert_eq!(on(back)["orders"], 0);
        assert_eq!(on(back)["amount"], json!({}));
        assert_eq!(
            on(back)["sms"],
            json!({ "queued": 0, "sending": 0, "sent": 0, "delivered": 0, "failed": 0 })
        );
    }
    assert_eq!(
        stats["orders_by_status"],
        json!({ "pending": 4, "confirmed": 0, "shipped": 0, "delivered": 0, "cancelled": 1 })
    );
    let sms = stats["sms_by_status"].as_object().unwrap();
    assert_eq!(
        sms.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["queued", "sending", "sent", "delivered", "failed"].map(String::from))
    );
    assert_eq!(
        sms.values().map(|v| v.as_i64().unwrap()).sum::<i64>(),
        5,
        "{stats}"
    );
    let per_day: i64 = days
        .iter()
        .flat_map(|d| d["sms"].as_object().unwrap().values())
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(per_day, 5);
    assert_eq!(
        on(3)["sms"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_i64().unwrap())
            .sum::<i64>(),
        3
    );

    // The list's dates are the same days.
    let list: Value = app
        .get(&format!(
            "/api/v1/orders?start_date={}&end_date={}",
            day(0),
            day(0)
        ))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [late["id"].as_str().unwrap()]);
    let list: Value = app
        .get(&format!(
            "/api/v1/orders?start_date={}&end_date={}",
            day(1),
            day(1)
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["id"], evening["id"]);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // The default is 14 days; 1 is today alone.
    let stats: Value = app.get("/api/v1/stats").await.json().await.unwrap();
    assert_eq!(stats["days"].as_array().unwrap().len(), 14);
    assert_eq!(stats["days"][13]["date"], today.to_string());
    assert_eq!(stats["orders_by_status"]["pending"], 5);
    let stats: Value = app.get("/api/v1/stats?days=1").await.json().await.unwrap();
    let days = stats["days"].as_array().unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0]["date"], today.to_string());
    assert_eq!(days[0]["orders"], 1);
    assert_eq!(days[0]["amount"], json!({ "KES": "100.00" }));
    for bad in ["0", "367", "x", "1.5", ""] {
        assert_problem(
            app.get(&format!("/api/v1/stats?days={bad}")).await,
            400,
            &["days"],
        )
        .await;
    }
}

#[tokio::test]
async fn stats_days_stay_right_across_a_dst_change() {
    let tz = Tz::Europe__Berlin;
    let app = spawn_app_with(|s| s.business.timezone = "Europe/Berlin".into()).await;
    let db = app.db.connect().await;
    let c = app.create_customer(json!({})).await;
    let cid = c["id"].as_str().unwrap();
    let today = today_in(tz);
    // The latest day within the last year that is not 24 hours long (a DST change).
    let length = |d: NaiveDate| {
        let start = |d: NaiveDate| {
            tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
                .earliest()
                .unwrap()
        };
        (start(d.succ_opt().unwrap()) - start(d)).num_hours()
    };
    let (back, change) = (1..360u64)
        .map(|b| (b, today - chrono::Days::new(b)))
        .find(|(_, d)| length(*d) != 24)
        .expect("a DST change in the last year");
    let local = |d: NaiveDate, h: u32, m: u32| {
        tz.from_local_datetime(&d.and_hms_opt(h, m, 0).unwrap())
            .earliest()
            .unwrap()
            .timestamp_millis()
    };
    let before = change.pred_opt().unwrap();
    for at in [
        local(change, 0, 30),
        local(change, 23, 30),
        local(before, 23, 30),
    ] {
        let o = app.create_order(cid, json!({})).await;
        backdate(&db, o["id"].as_str().unwrap(), at).await;
    }
    let stats: Value = app
        .get("/api/v1/stats?days=366")
        .await
        .json()
        .await
        .unwrap();
    let days = stats["days"].as_array().unwrap();
    assert_eq!(days.len(), 366);
    let entry = |d: NaiveDate| {
        days.iter()
            .find(|e| e["date"] == d.to_string())
            .unwrap_or_else(|| panic!("{d} missing"))
    };
    assert_eq!(
        entry(change)["orders"],
        2,
        "{change} ({} hours): {}",
        length(change),
        entry(change)
    );
    assert_eq!(entry(before)["orders"], 1, "{before}");
    assert_eq!(entry(change.succ_opt().unwrap())["orders"], 0);
    assert_eq!(days[365 - back as usize]["date"], change.to_string());
    let list: Value = app
        .get(&format!(
            "/api/v1/orders?start_date={change}&end_date={change}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn export_import_and_stats_are_documented() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let paths = &doc["paths"];
    assert!(
        paths["/api/v1/orders/export.csv"]["get"]["responses"]["200"]["content"]["text/csv"]
            .is_object()
    );
    assert!(paths["/api/v1/customers/export.csv"]["get"].is_object());
    let import = &paths["/api/v1/customers/import"]["post"];
    assert!(
        import["requestBody"]["content"]["text/csv"].is_object(),
        "{import}"
    );
    for status in ["200", "201", "413", "415", "422"] {
        assert!(import["responses"][status].is_object(), "{status}");
    }
    assert!(paths["/api/v1/stats"]["get"]["responses"]["200"].is_object());
    assert!(doc["components"]["schemas"]["StatsView"].is_object());
    // Their paths are not taken for an {id}.
    let r = app
        .request(Method::POST, "/api/v1/customers/import")
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}
