//! The SMS sender lease: one instance of the deployment sends at a time, so that the
//! governor limits (`sms.rate_per_second`, `burst`, `per_recipient_per_minute`) hold for
//! the deployment, and a stalled sender is fenced off rather than trusted.
//!
//! The lease is the one row of `sms_sender`: who holds it (`holder`, this installation's
//! instance id, and `boot`, this start of it), until when (`expires_at`, epoch ms on the
//! database's clock, so that no two machines' clocks are compared) and its `epoch`. Every
//! dispatcher tries to take or renew it every quarter of `sms.lease_secs`, with one
//! statement:
//!
//! - renewed (epoch kept) while its holder and boot are this process's and it has not run
//!   out;
//! - taken (epoch + 1) when it has run out, or at once when its holder is this instance
//!   and its boot an earlier start (the previous process of this installation is gone:
//!   its restart need not wait for the lease to run out).
//!
//! A claim of messages is only made under the epoch the dispatcher holds, checked in the
//! claim's transaction (see `store::ops::notifications::claim`); messages claimed under an
//! older epoch belong to a dead or fenced-off sender and are taken over at once.

use crate::store::ops::notifications::{Params, db_now_ms};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// Who this process is to the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable across restarts of this installation: kept in `data_dir/instance-id`.
    pub instance: String,
    /// This start of the process (a UUID v7: later starts sort after earlier ones).
    pub boot: String,
}

/// The file that keeps the instance id.
pub fn instance_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("instance-id")
}

impl Identity {
    /// This installation's instance id (made on first start, file mode 0600 like the other
    /// generated files) and a fresh boot id.
    pub fn load(data_dir: &Path) -> std::io::Result<Self> {
        let (instance, _) =
            crate::auth::token::load_or_create_secret(&instance_file(data_dir), "duka-")?;
        Ok(Self::new(instance))
    }

    pub fn new(instance: String) -> Self {
        Self {
            instance,
            boot: Uuid::now_v7().to_string(),
        }
    }

    /// The instance id as logs show it: enough to tell instances apart.
    pub fn short(&self) -> &str {
        short(&self.instance)
    }
}

pub fn short(instance: &str) -> &str {
    instance.get(..17).unwrap_or(instance)
}

/// Byte order, whatever the database's collation: boot ids compare as their time.
fn binary(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => " COLLATE \"C\"",
        _ => "",
    }
}

/// Takes or renews the lease for `lease` (see the module's rules). Answers the epoch when
/// this process holds it now, `None` when another does.
pub async fn acquire(
    db: &DatabaseConnection,
    me: &Identity,
    lease: Duration,
) -> Result<Option<i64>, DbErr> {
    let backend = db.get_database_backend();
    let mut p = Params::new(backend);
    let holder = p.push(me.instance.clone());
    let boot = p.push(me.boot.clone());
    let lease_ms = p.push(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
    let sql = format!(
        "WITH c AS (SELECT {now} AS now_ms) \
         UPDATE sms_sender SET \
           epoch = CASE WHEN holder = {holder} AND boot = {boot} AND expires_at > c.now_ms \
             THEN epoch ELSE epoch + 1 END, \
           holder = {holder}, boot = {boot}, expires_at = c.now_ms + {lease_ms} \
         FROM c \
         WHERE id = 1 AND (expires_at <= c.now_ms \
           OR (holder = {holder} AND boot{binary} <= {boot})) \
         RETURNING epoch",
        now = db_now_ms(backend),
        binary = binary(backend),
    );
    let row = db.query_one_raw(p.statement(sql)).await?;
    row.map(|r| r.try_get::<i64>("", "epoch")).transpose()
}

/// The lease as the database has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub instance: String,
    pub boot: String,
    pub epoch: i64,
    /// Milliseconds until it runs out (negative: it has).
    pub left_ms: i64,
}

pub async fn holder(db: &DatabaseConnection) -> Result<Option<Holder>, DbErr> {
    let backend = db.get_database_backend();
    let sql = format!(
        "SELECT holder, boot, epoch, expires_at - {now} AS left_ms FROM sms_sender WHERE id = 1",
        now = db_now_ms(backend)
    );
    let row = db
        .query_one_raw(Params::new(backend).statement(sql))
        .await?;
    row.map(|r| {
        Ok(Holder {
            instance: r.try_get("", "holder")?,
            boot: r.try_get("", "boot")?,
            epoch: r.try_get("", "epoch")?,
            left_ms: r.try_get("", "left_ms")?,
        })
    })
    .transpose()
}

/// Gives the lease up (after a graceful stop), so that another instance takes over at once
/// rather than when it runs out. Nothing happens when this process does not hold it.
pub async fn release(db: &DatabaseConnection, me: &Identity) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    let mut p = Params::new(backend);
    let sql = format!(
        "UPDATE sms_sender SET expires_at = 0 WHERE id = 1 AND holder = {holder} AND boot = {boot}",
        holder = p.push(me.instance.clone()),
        boot = p.push(me.boot.clone()),
    );
    Ok(db.execute_raw(p.statement(sql)).await?.rows_affected() > 0)
}
