//! The `deployment` table: facts every instance sharing a database must agree on, one row
//! each, written by the first instance that starts. Today one: the fingerprint of the key
//! that signs session cookies (never the key).

use super::error::StoreError;
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

/// The row holding the session key's fingerprint.
pub const SESSION_KEY_FINGERPRINT: &str = "session_key_fingerprint";

/// What the deployment says of this instance's session key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// No instance had recorded one: this one's is now the deployment's.
    Recorded,
    /// The same as the deployment's.
    Same,
    /// Another key is the deployment's (its fingerprint).
    Differs(String),
}

fn statement(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => sql.replace("?1", "$1").replace("?2", "$2"),
        _ => sql.to_string(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Records `fingerprint` as the deployment's unless one is recorded already, then compares.
/// Instances starting together agree: the first insert wins, the others read it.
pub async fn check_session_key(
    db: &impl ConnectionTrait,
    fingerprint: &str,
) -> Result<KeyCheck, StoreError> {
    let inserted = db
        .execute_raw(statement(
            db,
            "INSERT INTO deployment (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            vec![SESSION_KEY_FINGERPRINT.into(), fingerprint.into()],
        ))
        .await?
        .rows_affected();
    if inserted == 1 {
        return Ok(KeyCheck::Recorded);
    }
    let row = db
        .query_one_raw(statement(
            db,
            "SELECT value FROM deployment WHERE name = ?1",
            vec![SESSION_KEY_FINGERPRINT.into()],
        ))
        .await?
        .ok_or_else(|| StoreError::Internal("the session key fingerprint vanished".into()))?;
    let recorded: String = row.try_get("", "value")?;
    Ok(if recorded == fingerprint {
        KeyCheck::Same
    } else {
        KeyCheck::Differs(recorded)
    })
}

/// Makes `fingerprint` the deployment's, whatever was recorded (a deliberate key change).
pub async fn reset_session_key(
    db: &impl ConnectionTrait,
    fingerprint: &str,
) -> Result<(), StoreError> {
    db.execute_raw(statement(
        db,
        "INSERT INTO deployment (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        vec![SESSION_KEY_FINGERPRINT.into(), fingerprint.into()],
    ))
    .await?;
    Ok(())
}
