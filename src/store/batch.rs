//! The batch engine: one transaction per batch of queued operations (group commit).
//!
//! A batch locks the event counter, applies its operations (its creates first, as one set:
//! see `ops::apply_creates`; the others in arrival order), then writes all of its events and
//! idempotency records with one multi-row INSERT each, moves the counter once and commits.
//! On PostgreSQL those last writes and the notify are one statement (see `with_ctes`).
//! Nothing is visible to anyone until the commit.
//!
//! A refused operation (unknown customer, duplicate, forbidden change) is decided before it
//! writes anything, so it stays out of the batch without disturbing the others. Only a
//! statement that fails (which on PostgreSQL aborts the transaction) makes the batch run
//! again with each operation in its own savepoint, so that the failure stays with its
//! operation.

use super::entities::{event, idempotency_key};
use super::error::StoreError;
use super::ops::{self, OpError, StoredReply, WriteOp, WriteReply};
use crate::domain::event::{Actor, Event, EventType};
use crate::domain::notification::{NotifyOn, Template};
use crate::domain::time::Timestamp;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, IntoActiveModel,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::oneshot;
use uuid::Uuid;

/// What the write path needs to know from the settings.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// `None` when SMS is disabled: orders then get no notification rows.
    pub sms_provider: Option<String>,
    pub notify_on: Vec<NotifyOn>,
    pub templates: BTreeMap<NotifyOn, Template>,
    /// `sms.max_attempts`: a message whose sender died mid-send this often is failed.
    pub max_attempts: i32,
    /// Names this instance in its commit notifications (`first-last/tag`), so that its own
    /// live feed can tell them apart: its hub has those events already.
    pub notify_tag: String,
}

/// A message written `queued` by a batch: what the SMS dispatcher needs to schedule it
/// without reading it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedSms {
    pub id: Uuid,
    pub phone: String,
    /// Not before this time (epoch ms).
    pub not_before: i64,
}

/// What a committed batch tells the rest of the system.
#[derive(Debug, Default)]
pub struct Outcome {
    /// In `seq` order.
    pub events: Vec<Event>,
    pub queued: Vec<QueuedSms>,
}

/// An operation waiting for its batch, and who waits for its result.
pub struct Pending {
    pub op: WriteOp,
    /// Who asked for it: the actor of the events it makes.
    pub actor: Actor,
    pub reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

/// The PostgreSQL channel each committed batch notifies (payload `first-last/tag`, the tag
/// naming the instance), so that every instance's live feed reads the new events at once
/// (see `live::feed`).
pub const EVENTS_CHANNEL: &str = "duka_events";

/// The longest one batch may take, commit included.
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);
/// Rows per multi-row INSERT: far below SQLite's and PostgreSQL's bound-parameter limits
/// for the widest table.
pub(super) const ROWS_PER_INSERT: usize = 500;
/// The most values PostgreSQL binds to one statement (its protocol counts them in 16 bits).
const PG_MAX_PARAMS: usize = 65_535;

/// Runs one batch in one transaction, answers every caller, and returns what was committed.
pub async fn run(db: &DatabaseConnection, cfg: &WriteConfig, batch: Vec<Pending>) -> Outcome {
    let (ops, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|p| ((p.op, p.actor), p.reply))
        .unzip();
    // The server's statement and lock timeouts do not help when the network goes silent:
    // bound the whole batch so the single writer never waits forever. A batch that timed
    // out may still have committed; callers retry safely with their Idempotency-Key.
    let result = match tokio::time::timeout(BATCH_TIMEOUT, execute(db, cfg, ops)).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(
            "the database did not answer in time".into(),
        )),
    };
    match result {
        Ok((results, outcome)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away (client disconnected) still had its change committed.
                let _ = reply.send(result);
            }
            outcome
        }
        Err(e) => {
            tracing::error!(error = %e, size = replies.len(), "write batch failed");
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            Outcome::default()
        }
    }
}

type Results = Vec<Result<WriteReply, StoreError>>;

/// An operation and who asked for it.
pub(super) type Change = (WriteOp, Actor);

fn is_create(change: &Change) -> bool {
    change.0.is_create()
}

async fn execute(
    db: &DatabaseConnection,
    cfg: &WriteConfig,
    ops: Vec<Change>,
) -> Result<(Results, Outcome), StoreError> {
    let single = ops.len() == 1;
    let retry = if single { None } else { Some(ops.clone()) };
    match execute_whole(db, cfg, ops).await? {
        Whole::Committed(done) => Ok(done),
        Whole::Failed(e) => match retry {
            None => Ok((vec![Err(e)], Outcome::default())),
            Some(ops) => execute_isolated(db, cfg, ops).await,
        },
    }
}

enum Whole {
    Committed((Results, Outcome)),
    /// A statement failed (not an infrastructure failure); nothing was committed.
    Failed(StoreError),
}

async fn begin(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, StoreError> {
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

/// Every operation in one transaction, no savepoints. The batch's creates are one run,
/// applied first as sets; the other operations follow in arrival order. Every operation in
/// a batch was sent before any of them was answered, so this order is one its callers
/// could have seen; keeping arrival order instead, the SMS dispatcher's claims and records
/// arriving between creates would split them into runs of a lookup and an INSERT per table
/// each.
async fn execute_whole(
    db: &DatabaseConnection,
    cfg: &WriteConfig,
    ops: Vec<Change>,
) -> Result<Whole, StoreError> {
    let size = ops.len();
    let (creates, others): (Vec<_>, Vec<_>) = ops
        .into_iter()
        .enumerate()
        .partition(|(_, change)| is_create(change));
    let txn = begin(db).await?;
    let last_seq = lock_event_counter(&txn).await?;
    let mut batch = Batch::new(cfg, last_seq + 1);
    let mut results: Vec<Option<Result<WriteReply, StoreError>>> =
        std::iter::repeat_with(|| None).take(size).collect();
    let failed = |e: OpError| match e {
        OpError::Refused(e) | OpError::Failed(e) => e,
    };
    let mut outcome: Result<(), StoreError> = Ok(());
    if !creates.is_empty() {
        let (at, run): (Vec<usize>, Vec<Change>) = creates.into_iter().unzip();
        match ops::apply_creates(&txn, run, &mut batch).await {
            Ok(run_results) => {
                for (i, r) in at.into_iter().zip(run_results) {
                    results[i] = Some(r.map_err(failed));
                }
            }
            Err(e) => outcome = Err(failed(e)),
        }
    }
    if outcome.is_ok() {
        for (i, (op, actor)) in others {
            let mark = batch.mark();
            batch.actor = actor;
            match ops::apply_one(&txn, op, &mut batch).await {
                Ok(reply) => results[i] = Some(Ok(reply)),
                Err(OpError::Refused(e)) => {
                    batch.reset(mark);
                    results[i] = Some(Err(e));
                }
                Err(OpError::Failed(e)) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    if let Err(e) = outcome {
        // Only a database that cannot be reached fails the whole batch; any other failure
        // is retried in isolation and stays with its operation.
        if matches!(e, StoreError::Unavailable(_)) {
            return Err(e);
        }
        txn.rollback().await?;
        return Ok(Whole::Failed(e));
    }
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(StoreError::Internal("an operation gave no result".into())))
        })
        .collect();
    let outcome = batch.finish(txn).await?;
    Ok(Whole::Committed((results, outcome)))
}

/// Each operation in its own savepoint: a failed one rolls back alone.
async fn execute_isolated(
    db: &DatabaseConnection,
    cfg: &WriteConfig,
    ops: Vec<Change>,
) -> Result<(Results, Outcome), StoreError> {
    let txn = begin(db).await?;
    let last_seq = lock_event_counter(&txn).await?;
    let mut batch = Batch::new(cfg, last_seq + 1);
    let mut results = Vec::with_capacity(ops.len());
    for (op, actor) in ops {
        let savepoint = txn.begin().await?;
        let mark = batch.mark();
        batch.actor = actor;
        match ops::apply_one(&savepoint, op, &mut batch).await {
            Ok(reply) => {
                savepoint.commit().await?;
                results.push(Ok(reply));
            }
            Err(OpError::Refused(e) | OpError::Failed(e)) => {
                if matches!(e, StoreError::Unavailable(_)) {
                    return Err(e);
                }
                savepoint.rollback().await?;
                batch.reset(mark);
                results.push(Err(e));
            }
        }
    }
    let outcome = batch.finish(txn).await?;
    Ok((results, outcome))
}

/// Reads the last assigned `seq` and, on PostgreSQL, locks the counter row until commit so
/// that several instances assign `seq` in commit order. On SQLite the IMMEDIATE transaction
/// already holds the database's write lock.
async fn lock_event_counter(txn: &impl ConnectionTrait) -> Result<i64, StoreError> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT last_seq FROM event_counter WHERE id = 1 FOR UPDATE",
        _ => "SELECT last_seq FROM event_counter WHERE id = 1",
    };
    let row = txn
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| StoreError::Internal("event_counter row is missing".into()))?;
    Ok(row.try_get::<i64>("", "last_seq")?)
}

/// An idempotency key as stored: (principal, route, key).
pub(super) type KeyId = (String, &'static str, String);

/// What an earlier operation of this batch did with an idempotency key.
#[derive(Debug, Clone)]
pub(super) struct SeenKey {
    pub request_hash: String,
    /// The stored response, or why the operation was refused.
    pub outcome: Result<StoredReply, StoreError>,
}

/// The state of one batch: the next `seq`, and what it commits besides its rows.
pub(crate) struct Batch<'a> {
    pub cfg: &'a WriteConfig,
    /// Who made the operation being applied: the actor of the events it emits.
    pub actor: Actor,
    first_seq: i64,
    next_seq: i64,
    events: Vec<Event>,
    queued: Vec<QueuedSms>,
    idempotency: Vec<idempotency_key::Model>,
    seen: HashMap<KeyId, SeenKey>,
    seen_order: Vec<KeyId>,
}

#[derive(Clone, Copy)]
pub(super) struct Mark {
    next_seq: i64,
    events: usize,
    queued: usize,
    idempotency: usize,
    seen: usize,
}

impl<'a> Batch<'a> {
    fn new(cfg: &'a WriteConfig, next_seq: i64) -> Self {
        Self {
            cfg,
            actor: Actor::unknown(),
            first_seq: next_seq,
            next_seq,
            events: Vec::new(),
            queued: Vec::new(),
            idempotency: Vec::new(),
            seen: HashMap::new(),
            seen_order: Vec::new(),
        }
    }

    pub(super) fn mark(&self) -> Mark {
        Mark {
            next_seq: self.next_seq,
            events: self.events.len(),
            queued: self.queued.len(),
            idempotency: self.idempotency.len(),
            seen: self.seen_order.len(),
        }
    }

    pub(super) fn reset(&mut self, mark: Mark) {
        self.next_seq = mark.next_seq;
        self.events.truncate(mark.events);
        self.queued.truncate(mark.queued);
        self.idempotency.truncate(mark.idempotency);
        for key in self.seen_order.drain(mark.seen..) {
            self.seen.remove(&key);
        }
    }

    /// Adds an event with the next `seq`; it is written when the batch commits.
    pub(super) fn emit(
        &mut self,
        kind: EventType,
        data: impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let data = serde_json::to_value(data).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.events.push(Event {
            kind,
            seq: self.next_seq,
            at: Timestamp::now(),
            actor: self.actor.clone(),
            data,
        });
        self.next_seq += 1;
        Ok(())
    }

    /// A message now `queued`, for the dispatcher once the batch has committed.
    pub(super) fn queued(&mut self, sms: QueuedSms) {
        self.queued.push(sms);
    }

    pub(super) fn seen(&self, key: &KeyId) -> Option<&SeenKey> {
        self.seen.get(key)
    }

    /// Remembers what an operation did with its key, for a repeat later in this batch,
    /// and (for a stored response) writes the key's record with the batch.
    pub(super) fn remember(&mut self, key: KeyId, seen: SeenKey) {
        if let Ok(StoredReply { status, body }) = &seen.outcome {
            self.idempotency.push(idempotency_key::Model {
                principal: key.0.clone(),
                route: key.1.to_string(),
                key: key.2.clone(),
                request_hash: seen.request_hash.clone(),
                status: i32::from(*status),
                body: body.clone(),
                created_at: Timestamp::now().millis(),
            });
        }
        self.seen_order.push(key.clone());
        self.seen.insert(key, seen);
    }

    /// Writes the events and idempotency records, moves the counter past the batch's
    /// events and commits. On PostgreSQL that is one statement (the INSERTs and the UPDATE
    /// as data-modifying CTEs, then the notify): one round trip instead of four.
    async fn finish(self, txn: sea_orm::DatabaseTransaction) -> Result<Outcome, StoreError> {
        use sea_orm::QueryTrait;
        let backend = txn.get_database_backend();
        let mut writes: Vec<Statement> = Vec::new();
        for chunk in self.events.chunks(ROWS_PER_INSERT) {
            let rows = chunk.iter().map(|e| {
                let (actor_type, actor_subject, actor_name) = e.actor.columns();
                event::Model {
                    seq: e.seq,
                    kind: e.kind.as_str().to_string(),
                    at: e.at.millis(),
                    data: e.data.to_string(),
                    actor_type: Some(actor_type.to_string()),
                    actor_subject: actor_subject.map(str::to_string),
                    actor_name: Some(actor_name.to_string()),
                    order_id: e.order_id().map(str::to_string),
                }
                .into_active_model()
            });
            writes.push(event::Entity::insert_many(rows).build(backend));
        }
        for chunk in self.idempotency.chunks(ROWS_PER_INSERT) {
            let rows = chunk
                .iter()
                .cloned()
                .map(IntoActiveModel::into_active_model);
            writes.push(idempotency_key::Entity::insert_many(rows).build(backend));
        }
        let moved = self.next_seq != self.first_seq;
        let params: usize = writes
            .iter()
            .map(|w| w.values.as_ref().map_or(0, |v| v.0.len()))
            .sum();
        let payload = || {
            format!(
                "{}-{}/{}",
                self.first_seq,
                self.next_seq - 1,
                self.cfg.notify_tag
            )
        };
        let counter = Statement::from_sql_and_values(
            backend,
            match backend {
                DbBackend::Postgres => "UPDATE event_counter SET last_seq = $1 WHERE id = 1",
                _ => "UPDATE event_counter SET last_seq = ? WHERE id = 1",
            },
            [(self.next_seq - 1).into()],
        );
        // Delivered at commit, to every instance's listener (this one's too).
        let notify = "SELECT pg_notify($1, $2)";
        if backend == DbBackend::Postgres && moved && params + 3 <= PG_MAX_PARAMS {
            writes.push(counter);
            txn.execute_raw(with_ctes(
                writes,
                notify,
                vec![EVENTS_CHANNEL.into(), payload().into()],
            ))
            .await?;
        } else {
            // SQLite, nothing to count, or too many values for one statement (an import).
            for write in writes {
                txn.execute_raw(write).await?;
            }
            if moved {
                txn.execute_raw(counter).await?;
                if backend == DbBackend::Postgres {
                    txn.execute_raw(Statement::from_sql_and_values(
                        backend,
                        notify,
                        [EVENTS_CHANNEL.into(), payload().into()],
                    ))
                    .await?;
                }
            }
        }
        txn.commit().await?;
        Ok(Outcome {
            events: self.events,
            queued: self.queued,
        })
    }
}

/// PostgreSQL statements run as data-modifying CTEs ahead of `last` (each executes whether
/// or not anything refers to it), as one statement: their `$n` placeholders are renumbered
/// after the ones before them, and `last`'s after all of theirs.
fn with_ctes(parts: Vec<Statement>, last: &str, last_values: Vec<sea_orm::Value>) -> Statement {
    let mut values: Vec<sea_orm::Value> = Vec::new();
    let mut ctes = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        ctes.push(format!("w{i} AS ({})", renumber(&part.sql, values.len())));
        values.extend(part.values.map(|v| v.0).unwrap_or_default());
    }
    let sql = format!("WITH {} {}", ctes.join(", "), renumber(last, values.len()));
    values.extend(last_values);
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// `sql` with every `$n` placeholder moved up by `by`. The statements given here are built
/// by sea-query or written in this file: values are bound, never inlined, so a `$` followed
/// by digits is always a placeholder.
fn renumber(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_after_the_statements_before() {
        assert_eq!(
            renumber("UPDATE t SET a = $1, b = $12 WHERE c = $2", 10),
            "UPDATE t SET a = $11, b = $22 WHERE c = $12"
        );
        assert_eq!(renumber("SELECT '$' || $1", 0), "SELECT '$' || $1");
        let parts = vec![
            Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO a VALUES ($1, $2)",
                [1.into(), 2.into()],
            ),
            Statement::from_sql_and_values(DbBackend::Postgres, "UPDATE b SET x = $1", [3.into()]),
        ];
        let st = with_ctes(
            parts,
            "SELECT pg_notify($1, $2)",
            vec!["c".into(), "p".into()],
        );
        assert_eq!(
            st.sql,
            "WITH w0 AS (INSERT INTO a VALUES ($1, $2)), w1 AS (UPDATE b SET x = $3) SELECT pg_notify($4, $5)"
        );
        assert_eq!(st.values.map(|v| v.0.len()), Some(5));
    }
}
