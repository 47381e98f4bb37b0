//! Reads behind the reports: stats grouped by calendar day in the database, and the
//! uniqueness pre-checks of a customer import. (Exports page through `reads::list_orders`
//! and `reads::list_customers`.)

use super::entities::customer;
use super::error::StoreError;
use crate::domain::FieldErrors;
use crate::domain::time::{DAY_MS, Timestamp};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect, Statement,
    Value,
};
use std::collections::HashSet;

/// What the stats are computed over: `[from, to)`, with the business time zone's UTC offsets
/// in that range (see `domain::time::offsets_between`).
#[derive(Debug, Clone)]
pub struct StatsWindow {
    pub from: Timestamp,
    pub to: Timestamp,
    pub offsets: Vec<(i64, i64)>,
}

/// Orders created on one day (a day number, see `domain::time`) in one currency that are
/// now in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDay {
    pub day: i64,
    pub currency: String,
    pub status: String,
    pub orders: i64,
    pub amount_minor: i64,
}

/// Notifications created on one day that are now in `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsDay {
    pub day: i64,
    pub status: String,
    pub count: i64,
}

#[derive(Debug, Clone, Default)]
pub struct StatsRows {
    pub orders: Vec<OrderDay>,
    pub sms: Vec<SmsDay>,
}

/// Placeholders in order of appearance, as each backend spells them.
struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: i64) -> &mut Self {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => {
                let n = self.values.len();
                self.text.push_str(&format!("${n}"));
            }
            _ => self.text.push('?'),
        }
        self
    }

    fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

/// `(created_at + <offset in force at created_at>) / DAY_MS`: the day number of a row in the
/// business time zone, DST changes included, the same on SQLite and PostgreSQL.
fn day_expr(sql: &mut Sql, offsets: &[(i64, i64)]) {
    sql.push("(created_at + ");
    match offsets {
        [] => {
            sql.bind(0);
        }
        [(_, only)] => {
            sql.bind(*only);
        }
        [(_, first), rest @ ..] => {
            sql.push("CASE");
            let mut current = *first;
            for (since, offset) in rest {
                sql.push(" WHEN created_at < ").bind(*since);
                sql.push(" THEN ").bind(current);
                current = *offset;
            }
            sql.push(" ELSE ").bind(current).push(" END");
        }
    }
    sql.push(&format!(") / {DAY_MS}"));
}

/// `SELECT day, <keys>, <aggregates> FROM <table>` over the window, grouped by day and keys.
fn grouped_by_day(
    backend: DbBackend,
    table: &str,
    keys: &[&str],
    aggregates: &str,
    w: &StatsWindow,
) -> Statement {
    let mut sql = Sql::new(backend);
    sql.push("SELECT ");
    day_expr(&mut sql, &w.offsets);
    let groups: String = (2..=keys.len() + 1).map(|i| format!(", {i}")).collect();
    sql.push(&format!(
        " AS day, {}, {aggregates} FROM {table} WHERE created_at >= ",
        keys.join(", ")
    ))
    .bind(w.from.millis())
    .push(" AND created_at < ")
    .bind(w.to.millis())
    .push(&format!(" GROUP BY 1{groups}"));
    sql.statement()
}

pub async fn stats(db: &impl ConnectionTrait, w: &StatsWindow) -> Result<StatsRows, StoreError> {
    let backend = db.get_database_backend();
    let orders = db
        .query_all_raw(grouped_by_day(
            backend,
            "orders",
            &["currency", "status"],
            // PostgreSQL sums BIGINT into NUMERIC.
            "COUNT(*) AS n, CAST(SUM(amount_minor) AS BIGINT) AS amount",
            w,
        ))
        .await?
        .into_iter()
        .map(|row| {
            Ok(OrderDay {
                day: row.try_get("", "day")?,
                currency: row.try_get("", "currency")?,
                status: row.try_get("", "status")?,
                orders: row.try_get("", "n")?,
                amount_minor: row.try_get("", "amount")?,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    let sms = db
        .query_all_raw(grouped_by_day(
            backend,
            "notifications",
            &["status"],
            "COUNT(*) AS n",
            w,
        ))
        .await?
        .into_iter()
        .map(|row| {
            Ok(SmsDay {
                day: row.try_get("", "day")?,
                status: row.try_get("", "status")?,
                count: row.try_get("", "n")?,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    Ok(StatsRows { orders, sms })
}

/// Phones and codes of `phones` and `codes` that a customer already has.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    pub phones: HashSet<String>,
    pub codes: HashSet<String>,
}

/// Values per `IN (...)`: well under SQLite's and PostgreSQL's parameter limits.
const IN_CHUNK: usize = 1000;

pub async fn taken(
    db: &impl ConnectionTrait,
    phones: &[String],
    codes: &[String],
) -> Result<Taken, StoreError> {
    let mut taken = Taken::default();
    for chunk in phones.chunks(IN_CHUNK) {
        let found: Vec<String> = customer::Entity::find()
            .select_only()
            .column(customer::Column::Phone)
            .filter(customer::Column::Phone.is_in(chunk.iter().cloned()))
            .into_tuple()
            .all(db)
            .await?;
        taken.phones.extend(found);
    }
    for chunk in codes.chunks(IN_CHUNK) {
        let found: Vec<String> = customer::Entity::find()
            .select_only()
            .column(customer::Column::Code)
            .filter(customer::Column::Code.is_in(chunk.iter().cloned()))
            .into_tuple()
            .all(db)
            .await?;
        taken.codes.extend(found);
    }
    Ok(taken)
}

/// A problem with one row of an import: `(N, field, message)`, N counting data rows from 1,
/// the field empty for the row as a whole.
pub type RowError = (usize, String, String);

/// The rows (`(N, phone, code)`) whose phone or code another customer has.
pub fn taken_rows<'a>(
    rows: impl IntoIterator<Item = (usize, &'a str, Option<&'a str>)>,
    taken: &Taken,
) -> Vec<RowError> {
    let mut errors = Vec::new();
    for (n, phone, code) in rows {
        if taken.phones.contains(phone) {
            errors.push((
                n,
                "phone".into(),
                "a customer with this phone number already exists".into(),
            ));
        }
        if code.is_some_and(|c| taken.codes.contains(c)) {
            errors.push((
                n,
                "code".into(),
                "a customer with this code already exists".into(),
            ));
        }
    }
    errors
}

/// Row errors listed in one answer; beyond, `"file"` says how many rows were left out.
pub const MAX_REPORTED_ROWS: usize = 1000;

/// `errors` keyed `"row N: field"` (`"row N"` for a whole row), in row order, for the first
/// `MAX_REPORTED_ROWS` rows that have any.
pub fn row_errors(mut errors: Vec<RowError>) -> FieldErrors {
    errors.sort_by_key(|e| e.0);
    let mut out = FieldErrors::default();
    let mut rows: Vec<usize> = errors.iter().map(|e| e.0).collect();
    rows.dedup();
    let listed = rows.get(MAX_REPORTED_ROWS).copied();
    for (n, field, message) in errors {
        if listed.is_some_and(|first_left_out| n >= first_left_out) {
            break;
        }
        let key = if field.is_empty() {
            format!("row {n}")
        } else {
            format!("row {n}: {field}")
        };
        out.add(key, message);
    }
    if rows.len() > MAX_REPORTED_ROWS {
        out.add(
            "file",
            format!(
                "{} rows have errors; the first {MAX_REPORTED_ROWS} are listed",
                rows.len()
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_expression_switches_offset_at_each_change() {
        let w = StatsWindow {
            from: Timestamp::from_millis(0),
            to: Timestamp::from_millis(10),
            offsets: vec![(0, 7), (5, 3)],
        };
        let keys = ["currency", "status"];
        let s = grouped_by_day(DbBackend::Postgres, "orders", &keys, "COUNT(*) AS n", &w);
        assert_eq!(
            s.sql,
            "SELECT (created_at + CASE WHEN created_at < $1 THEN $2 ELSE $3 END) / 86400000 \
             AS day, currency, status, COUNT(*) AS n FROM orders WHERE created_at >= $4 AND \
             created_at < $5 GROUP BY 1, 2, 3"
        );
        let s = grouped_by_day(DbBackend::Sqlite, "orders", &keys, "COUNT(*) AS n", &w);
        assert!(
            s.sql
                .starts_with("SELECT (created_at + CASE WHEN created_at < ? THEN ?")
        );
    }
}
