//! Store errors: what a write or read can fail with, in terms the HTTP layer maps to statuses.

use crate::domain::FieldErrors;
use sea_orm::{DbErr, SqlErr};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("validation failed")]
    Validation(FieldErrors),
    /// Refused for now: `detail`, and when to try again.
    #[error("{detail}")]
    TooSoon {
        detail: String,
        retry_after_secs: u64,
    },
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Failures of the database itself (as opposed to a request's own fault).
    pub fn is_infrastructure(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Internal(_))
    }
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(m)) => {
                return Self::Conflict(unique_message(&m));
            }
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
                return Self::Conflict("the change conflicts with related records".into());
            }
            _ => {}
        }
        if is_unavailable(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

/// A friendly message for a unique violation, from either backend's wording.
fn unique_message(raw: &str) -> String {
    let raw = raw.to_ascii_lowercase();
    for (needle, message) in [
        ("phone", "a customer with this phone number already exists"),
        ("code", "a customer with this code already exists"),
        ("order_number", "an order with this number already exists"),
        (
            "idempotency",
            "a request with this Idempotency-Key is already being processed",
        ),
    ] {
        if raw.contains(needle) {
            return message.into();
        }
    }
    "a record with the same unique value already exists".into()
}

fn is_unavailable(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    use sea_orm::sqlx::Error as Sqlx;
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            match &**s {
                Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Tls(_)
                | Sqlx::Protocol(_) => true,
                Sqlx::Database(d) => {
                    // PostgreSQL: connection exceptions, shutdown, too many clients, missing db,
                    // lock or statement timeouts; SQLite: busy or locked beyond the busy
                    // timeout, disk I/O, read-only.
                    let code = d.code().unwrap_or_default();
                    // SQLite reports extended codes; the primary code is the low byte:
                    // BUSY 5, LOCKED 6, NOMEM 7... IOERR 10, FULL 13, READONLY 8.
                    if d.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                        .is_some()
                    {
                        return code
                            .parse::<i32>()
                            .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 13));
                    }
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || matches!(&*code, "53300" | "3D000" | "55P03" | "57014")
                }
                _ => false,
            }
        }
        _ => false,
    }
}
