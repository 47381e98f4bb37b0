//! Export, import and stats: `/api/v1/orders/export.csv`, `/api/v1/customers/export.csv`,
//! `/api/v1/customers/import` and `/api/v1/stats`.

use super::AppState;
use super::openapi::{PROBLEM_JSON, Problem, Routes};
use super::orders::order_filter;
use super::params::Params;
use super::problem::ApiError;
use crate::auth::Principal;
use crate::auth::role::Role;
use crate::domain::FieldErrors;
use crate::domain::customer::{CustomerCode, NewCustomer, parse_email, parse_name};
use crate::domain::event::Actor;
use crate::domain::notification::NotificationStatus;
use crate::domain::order::OrderStatus;
use crate::domain::phone::Phone;
use crate::domain::time::{self, Timestamp};
use crate::domain::views::{CustomerView, OrderView, Page};
use crate::store::ops::WriteOp;
use crate::store::reader::{ListCustomers, ListOrders, Stats, TakenCustomerKeys};
use crate::store::reads::{PageRequest, decode_cursor};
use crate::store::reports::{RowError, StatsRows, StatsWindow, row_errors, taken_rows};
use crate::store::repository::Write;
use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn routes(api: &mut Routes) {
    api.add_for(Role::Viewer, __path_export_orders, export_orders)
        .add_for(Role::Viewer, __path_export_customers, export_customers)
        .add_for(Role::Staff, __path_import_customers, import_customers)
        .add_for(Role::Viewer, __path_stats, stats);
}

// ---- exports ---------------------------------------------------------------------------

/// Rows read from the database per page of an export: the server holds about one page.
const EXPORT_PAGE: u64 = 500;

const ORDER_COLUMNS: [&str; 11] = [
    "order_number",
    "created_at",
    "status",
    "customer_code",
    "customer_name",
    "phone",
    "item",
    "quantity",
    "amount",
    "currency",
    "sms_status",
];

const CUSTOMER_COLUMNS: [&str; 5] = ["code", "name", "phone", "email", "created_at"];

/// A cell as written: one that a spreadsheet would run as a formula gets a leading `'`.
fn guard(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// A cell as read back: the guard's `'` is dropped, so an export imports again.
fn unguard(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => cell,
    }
}

/// RFC 4180 text of `records` (CRLF line ends, quotes where needed), each cell guarded.
fn csv_bytes<R: AsRef<[String]>>(records: impl IntoIterator<Item = R>) -> std::io::Result<Bytes> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    for record in records {
        writer.write_record(record.as_ref().iter().map(|c| guard(c).into_owned()))?;
    }
    writer
        .into_inner()
        .map(Bytes::from)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The body of an export: the header row, then one page at a time, each read from the
/// database only when the previous one has been handed to the connection (actix polls the
/// stream while its write buffer has room), so memory stays flat whatever the row count.
/// A failure after the first bytes ends the body early: the chunked encoding is left
/// unterminated, so the client sees an incomplete download rather than a short file.
fn csv_export<T, F, Fut>(
    header: &'static [&'static str],
    fetch: F,
    row: fn(&T) -> Vec<String>,
) -> impl Stream<Item = std::io::Result<Bytes>> + 'static
where
    T: 'static,
    F: Fn(PageRequest) -> Fut + 'static,
    Fut: Future<Output = Result<Page<T>, ApiError>> + 'static,
{
    enum Next {
        Header,
        Page(Option<Uuid>),
        Done,
    }
    futures_util::stream::unfold((Next::Header, fetch), move |(next, fetch)| async move {
        match next {
            Next::Header => {
                let cells: Vec<String> = header.iter().map(|h| h.to_string()).collect();
                Some((csv_bytes([cells]), (Next::Page(None), fetch)))
            }
            Next::Page(after) => {
                let page = PageRequest {
                    limit: EXPORT_PAGE,
                    after,
                };
                match fetch(page).await {
                    Ok(page) => {
                        let bytes = csv_bytes(page.items.iter().map(row));
                        let next = match page.next_cursor.as_deref().and_then(decode_cursor) {
                            Some(last) => Next::Page(Some(last)),
                            None => Next::Done,
                        };
                        Some((bytes, (next, fetch)))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "export stopped");
                        let e = std::io::Error::other(e.to_string());
                        Some((Err(e), (Next::Done, fetch)))
                    }
                }
            }
            Next::Done => None,
        }
    })
}

fn csv_response(
    name: &str,
    tz: chrono_tz::Tz,
    body: impl Stream<Item = std::io::Result<Bytes>> + 'static,
) -> HttpResponse {
    let today = time::local_day(tz, Timestamp::now()).format("%Y%m%d");
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}-{today}.csv\""),
        ))
        .streaming(body)
}

fn order_record(o: &OrderView) -> Vec<String> {
    vec![
        o.order_number.clone(),
        o.created_at.to_rfc3339(),
        o.status.as_str().to_string(),
        o.customer.code.clone(),
        o.customer.name.clone(),
        o.customer.phone.clone(),
        o.item.clone(),
        o.quantity.to_string(),
        o.amount.clone(),
        o.currency.clone(),
        o.notification
            .as_ref()
            .map(|n| n.status.as_str().to_string())
            .unwrap_or_default(),
    ]
}

fn customer_record(c: &CustomerView) -> Vec<String> {
    vec![
        c.code.clone(),
        c.name.clone(),
        c.phone.clone(),
        c.email.clone().unwrap_or_default(),
        c.created_at.to_rfc3339(),
    ]
}

/// Every order matching the filters of `GET /api/v1/orders`, newest first, as CSV.
///
/// Columns: `order_number,created_at,status,customer_code,customer_name,phone,item,quantity,
/// amount,currency,sms_status`. A cell beginning with `=`, `+`, `-`, `@`, tab or carriage
/// return is prefixed with `'`. Streamed page by page: rows are as the database had them
/// when their page was read.
#[utoipa::path(get, path = "/api/v1/orders/export.csv", tag = "orders", params(super::orders::OrderFilterQuery),
    responses(
        (status = 200, description = "`Content-Disposition: attachment; filename=\"orders-YYYYMMDD.csv\"`", content_type = "text/csv", body = String),
    ))]
async fn export_orders(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let filter = order_filter(&Params::of(&req), state.timezone)?;
    let reader = state.reader.clone();
    let body = csv_export(
        &ORDER_COLUMNS,
        move |page| {
            let msg = ListOrders {
                filter: filter.clone(),
                page,
            };
            let reader = reader.clone();
            async move { Ok(reader.send(msg).await??) }
        },
        order_record,
    );
    Ok(csv_response("orders", state.timezone, body))
}

/// Every customer matching `q`, newest first, as CSV: `code,name,phone,email,created_at`
/// (quoting and the formula guard as for orders).
#[utoipa::path(get, path = "/api/v1/customers/export.csv", tag = "customers", params(super::customers::CustomerFilterQuery),
    responses(
        (status = 200, description = "`Content-Disposition: attachment; filename=\"customers-YYYYMMDD.csv\"`", content_type = "text/csv", body = String),
    ))]
async fn export_customers(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = Params::of(&req).text("q")?;
    let reader = state.reader.clone();
    let body = csv_export(
        &CUSTOMER_COLUMNS,
        move |page| {
            let msg = ListCustomers { q: q.clone(), page };
            let reader = reader.clone();
            async move { Ok(reader.send(msg).await??) }
        },
        customer_record,
    );
    Ok(csv_response("customers", state.timezone, body))
}

// ---- import ----------------------------------------------------------------------------

pub const MAX_IMPORT_BYTES: usize = 5 * 1024 * 1024;
pub const MAX_IMPORT_ROWS: usize = 50_000;

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    /// Customers created, one `customer.created` event each.
    created: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ImportDryRun {
    /// Customers the same file would create.
    would_create: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Column {
    Name,
    Phone,
    Code,
    Email,
}

impl Column {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "name" => Some(Self::Name),
            "phone" => Some(Self::Phone),
            "code" => Some(Self::Code),
            "email" => Some(Self::Email),
            _ => None,
        }
    }
}

/// Reads the body: `text/csv` (UTF-8), at most `MAX_IMPORT_BYTES`.
async fn read_csv_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Bytes, ApiError> {
    let csv = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == mime::TEXT
                && m.subtype() == mime::CSV
                && m.get_param(mime::CHARSET)
                    .is_none_or(|c| c.as_str().eq_ignore_ascii_case("utf-8"))
        });
    if !csv {
        return Err(ApiError::WrongMediaType(
            "send the file as text/csv (UTF-8)".into(),
        ));
    }
    let too_large = || {
        ApiError::FileTooLarge(format!(
            "the file is over {} MiB",
            MAX_IMPORT_BYTES / 1024 / 1024
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_IMPORT_BYTES) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest {
            detail: format!("could not read the body: {e}"),
            param: None,
        })?;
        if body.len() + chunk.len() > MAX_IMPORT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// What the file says: the valid rows as customers (with their row numbers), and every
/// problem found in the others.
struct Parsed {
    rows: Vec<(usize, NewCustomer)>,
    errors: Vec<RowError>,
}

fn parse_import(body: &[u8], region: crate::domain::phone::Region) -> Result<Parsed, ApiError> {
    let file_error = |message: String| ApiError::Validation(FieldErrors::single("file", message));
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        file_error(format!("is not UTF-8 text (line {line})"))
    })?;
    // Spreadsheets often begin a UTF-8 file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(file_error(
            "is empty: it needs a header row and a row per customer".into(),
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| file_error(format!("has no readable header row: {e}")))?
        .clone();
    let mut columns: Vec<Column> = Vec::with_capacity(header.len());
    let mut header_errors = FieldErrors::default();
    for name in &header {
        let name = name.trim().to_ascii_lowercase();
        match Column::parse(&name) {
            Some(c) if columns.contains(&c) => {
                header_errors.add("header", format!("the column {name:?} appears twice"))
            }
            Some(c) => columns.push(c),
            None => header_errors.add(
                "header",
                format!("unknown column {name:?}: the columns are name, phone, code and email"),
            ),
        }
    }
    for (required, name) in [(Column::Name, "name"), (Column::Phone, "phone")] {
        if !columns.contains(&required) {
            header_errors.add("header", format!("the column {name:?} is required"));
        }
    }
    if !header_errors.is_empty() {
        return Err(ApiError::Validation(header_errors));
    }
    let mut parsed = Parsed {
        rows: Vec::new(),
        errors: Vec::new(),
    };
    let mut phones: HashMap<String, usize> = HashMap::new();
    let mut codes: HashMap<String, usize> = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let n = i + 1;
        if n > MAX_IMPORT_ROWS {
            return Err(ApiError::FileTooLarge(format!(
                "the file has more than {MAX_IMPORT_ROWS} rows"
            )));
        }
        let mut error = |field: &str, message: String| {
            parsed.errors.push((n, field.to_string(), message));
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                error("", format!("cannot be read: {e}"));
                continue;
            }
        };
        if record.len() != columns.len() {
            error(
                "",
                format!(
                    "has {} fields where the header has {}",
                    record.len(),
                    columns.len()
                ),
            );
            continue;
        }
        let cell = |c: Column| {
            columns
                .iter()
                .position(|x| *x == c)
                .and_then(|at| record.get(at))
                .map(unguard)
                .filter(|v| !v.trim().is_empty())
        };
        let name = match parse_name(cell(Column::Name).unwrap_or("")) {
            Ok(v) => Some(v),
            Err(e) => {
                error("name", e);
                None
            }
        };
        let phone = match Phone::parse(cell(Column::Phone).unwrap_or(""), region) {
            Ok(p) => match phones.get(p.as_str()) {
                Some(first) => {
                    error("phone", format!("repeats the phone of row {first}"));
                    None
                }
                None => {
                    phones.insert(p.as_str().to_string(), n);
                    Some(p)
                }
            },
            Err(e) => {
                error("phone", e);
                None
            }
        };
        let code = match cell(Column::Code).map(CustomerCode::parse) {
            None => Some(None),
            Some(Ok(c)) => match codes.get(c.as_str()) {
                Some(first) => {
                    error("code", format!("repeats the code of row {first}"));
                    None
                }
                None => {
                    codes.insert(c.as_str().to_string(), n);
                    Some(Some(c))
                }
            },
            Some(Err(e)) => {
                error("code", e);
                None
            }
        };
        let email = match cell(Column::Email).map(parse_email) {
            None => Some(None),
            Some(Ok(e)) => Some(Some(e)),
            Some(Err(e)) => {
                error("email", e);
                None
            }
        };
        if let (Some(name), Some(phone), Some(code), Some(email)) = (name, phone, code, email) {
            parsed.rows.push((
                n,
                NewCustomer {
                    name,
                    code,
                    phone,
                    email,
                },
            ));
        }
    }
    if parsed.rows.is_empty() && parsed.errors.is_empty() {
        return Err(file_error("has a header row but no customers".into()));
    }
    Ok(parsed)
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ImportQuery {
    /// `true`: only validate, write nothing (200 `{"would_create": N}`).
    dry_run: Option<bool>,
}

/// Creates every customer of a CSV file, or none.
///
/// A header row names `name` and `phone` and optionally `code` and `email`, in any order
/// (case-insensitive); then one customer per row, validated as `POST /api/v1/customers`
/// would. A code or phone repeated in the file or already taken is an error. Any error: 422
/// with `errors` keyed `"row N: field"` (N counts data rows from 1; `"header"` and `"file"`
/// for the file as a whole) and nothing written. A `'` the exports put before `=`, `+`,
/// `-`, `@` is dropped, so an export imports again.
#[utoipa::path(post, path = "/api/v1/customers/import", tag = "customers", params(ImportQuery),
    request_body(content = String, content_type = "text/csv", description = "UTF-8 CSV, at most 5 MiB and 50000 rows",
        example = "name,phone,code,email\nAmina Njeri,0722000001,AMINA-01,amina@example.com\n"),
    responses(
        (status = 200, description = "Dry run: the file is valid", body = ImportDryRun),
        (status = 201, description = "Every row created", body = ImportResult),
        (status = 409, description = "A phone or code was taken while the file was being written: nothing was written", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Over 5 MiB or 50000 rows", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Body is not text/csv", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Bad rows, each named in `errors`; nothing was written", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn import_customers(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let dry_run = Params::of(&req)
        .parse("dry_run", |v| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("must be true or false".to_string()),
        })?
        .unwrap_or(false);
    let body = read_csv_body(&req, payload).await?;
    let region = state.region;
    // 50,000 rows take a while to validate (phone numbers above all): off the worker, so
    // that the other requests it serves, order taking first, do not wait.
    let Parsed { rows, mut errors } = web::block(move || parse_import(&body, region))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the import could not be checked: {e}")))??;
    let phones: Vec<String> = rows
        .iter()
        .map(|(_, r)| r.phone.as_str().to_string())
        .collect();
    let codes: Vec<String> = rows
        .iter()
        .filter_map(|(_, r)| r.code.as_ref().map(|c| c.as_str().to_string()))
        .collect();
    let taken = state
        .reader
        .send(TakenCustomerKeys { phones, codes })
        .await??;
    errors.extend(taken_rows(
        rows.iter().map(|(n, r)| {
            (
                *n,
                r.phone.as_str(),
                r.code.as_ref().map(CustomerCode::as_str),
            )
        }),
        &taken,
    ));
    if !errors.is_empty() {
        return Err(ApiError::Validation(row_errors(errors)));
    }
    let n = rows.len();
    if dry_run {
        return Ok(HttpResponse::Ok().json(ImportDryRun { would_create: n }));
    }
    state
        .repo
        .send(Write::new(
            WriteOp::ImportCustomers { customers: rows },
            Actor::from(&principal),
        ))
        .await??;
    Ok(HttpResponse::Created().json(ImportResult { created: n }))
}

// ---- stats -----------------------------------------------------------------------------

pub const MAX_STATS_DAYS: u32 = 366;
const DEFAULT_STATS_DAYS: u32 = 14;

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "timezone": "Africa/Nairobi",
    "days": [{"date": "2026-11-30", "orders": 12, "amount": {"KES": "14400.00"},
        "sms": {"queued": 0, "sending": 0, "sent": 1, "delivered": 10, "failed": 1}}],
    "orders_by_status": {"pending": 3, "confirmed": 4, "shipped": 2, "delivered": 2, "cancelled": 1},
    "sms_by_status": {"queued": 0, "sending": 0, "sent": 1, "delivered": 10, "failed": 1}
}))]
pub struct StatsView {
    /// `business.timezone`, whose calendar days `days` are.
    timezone: String,
    /// Oldest first, every day (zeros too), the last one today.
    days: Vec<DayStats>,
    /// Orders created in these days, by their status now; every status appears.
    orders_by_status: BTreeMap<String, i64>,
    /// SMS notifications created in these days, by their status now; every status appears.
    sms_by_status: BTreeMap<String, i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DayStats {
    #[schema(format = Date, example = "2026-11-30")]
    date: String,
    /// Orders created that day, whatever their status now.
    orders: i64,
    /// Their total per currency (ISO 4217 -> decimal string); only currencies that occur.
    amount: BTreeMap<String, String>,
    /// SMS notifications created that day, by their status now; every status appears.
    sms: BTreeMap<String, i64>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StatsQuery {
    /// How many days, the last one today (default 14).
    #[param(minimum = 1, maximum = 366)]
    days: Option<u32>,
}

fn zeros<const N: usize>(statuses: [&'static str; N]) -> BTreeMap<String, i64> {
    statuses.into_iter().map(|s| (s.to_string(), 0)).collect()
}

/// Shapes the database's per-day groups into one entry per day of `first..=last`.
fn stats_view(
    tz: chrono_tz::Tz,
    first: chrono::NaiveDate,
    count: u32,
    rows: StatsRows,
) -> StatsView {
    let order_statuses = OrderStatus::ALL.map(OrderStatus::as_str);
    let sms_statuses = NotificationStatus::ALL.map(NotificationStatus::as_str);
    let first_number = time::day_number(first);
    let mut days: Vec<DayStats> = (0..i64::from(count))
        .map(|i| DayStats {
            date: time::day_of_number(first_number + i)
                .map(|d| d.to_string())
                .unwrap_or_default(),
            orders: 0,
            amount: BTreeMap::new(),
            sms: zeros(sms_statuses),
        })
        .collect();
    let mut amounts: Vec<BTreeMap<String, i64>> = vec![BTreeMap::new(); days.len()];
    let mut orders_by_status = zeros(order_statuses);
    let mut sms_by_status = zeros(sms_statuses);
    let len = days.len();
    let index = |day: i64| {
        usize::try_from(day - first_number)
            .ok()
            .filter(|&i| i < len)
    };
    for row in rows.orders {
        *orders_by_status.entry(row.status).or_default() += row.orders;
        if let Some(i) = index(row.day) {
            days[i].orders += row.orders;
            *amounts[i].entry(row.currency).or_default() += row.amount_minor;
        }
    }
    for row in rows.sms {
        *sms_by_status.entry(row.status.clone()).or_default() += row.count;
        if let Some(i) = index(row.day) {
            *days[i].sms.entry(row.status).or_default() += row.count;
        }
    }
    for (day, amounts) in days.iter_mut().zip(amounts) {
        day.amount = amounts
            .into_iter()
            .map(|(currency, minor)| (currency, rust_decimal::Decimal::new(minor, 2).to_string()))
            .collect();
    }
    StatsView {
        timezone: tz.name().to_string(),
        days,
        orders_by_status,
        sms_by_status,
    }
}

/// Orders and SMS per calendar day in `business.timezone`, counted by the database.
#[utoipa::path(get, path = "/api/v1/stats", tag = "orders", params(StatsQuery),
    responses((status = 200, description = "The last `days` days, today included", body = StatsView)))]
async fn stats(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let days = Params::of(&req)
        .parse("days", |v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_STATS_DAYS).contains(n))
                .ok_or_else(|| format!("must be an integer from 1 to {MAX_STATS_DAYS}"))
        })?
        .unwrap_or(DEFAULT_STATS_DAYS);
    let tz = state.timezone;
    let today = time::local_day(tz, Timestamp::now());
    let first = today
        .checked_sub_days(chrono::Days::new(u64::from(days - 1)))
        .unwrap_or(today);
    let tomorrow = today
        .checked_add_days(chrono::Days::new(1))
        .unwrap_or(today);
    let (from, to) = (time::day_start(tz, first), time::day_start(tz, tomorrow));
    let window = StatsWindow {
        from,
        to,
        offsets: time::offsets_between(tz, from, to),
    };
    let rows = state.reader.send(Stats { window }).await??;
    Ok(HttpResponse::Ok().json(stats_view(tz, first, days, rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_guarded_and_unguarded() {
        for cell in ["=1+1", "+254711000000", "-3", "@SUM(A1)", "\tx", "\rx"] {
            let guarded = guard(cell);
            assert_eq!(guarded, format!("'{cell}"));
            assert_eq!(unguard(&guarded), cell);
        }
        for cell in ["Amina", "1200.00", "", "'quoted", " =x"] {
            assert_eq!(guard(cell), cell);
            assert_eq!(unguard(cell), cell);
        }
        let bytes = csv_bytes([vec!["a,b".to_string(), "say \"hi\"".into(), "=x".into()]]).unwrap();
        assert_eq!(&bytes[..], b"\"a,b\",\"say \"\"hi\"\"\",'=x\r\n");
    }

    #[test]
    fn row_errors_are_listed_in_row_order_up_to_a_limit() {
        use crate::store::reports::MAX_REPORTED_ROWS as MAX;
        let errors: Vec<RowError> = (1..=MAX + 5)
            .rev()
            .map(|n| {
                let field = if n % 2 == 0 { "phone" } else { "" };
                (n, field.to_string(), "bad".to_string())
            })
            .collect();
        let out = row_errors(errors).0;
        assert!(out.contains_key("row 2: phone") && out.contains_key("row 1"));
        assert!(out.contains_key(&format!("row {MAX}: phone")));
        let past = format!("row {}", MAX + 1);
        assert!(
            !out.keys()
                .any(|k| k == &past || k.starts_with(&format!("{past}:")))
        );
        assert_eq!(out.len(), MAX + 1);
        assert_eq!(
            out["file"],
            [format!(
                "{} rows have errors; the first {MAX} are listed",
                MAX + 5
            )]
        );
    }
}
