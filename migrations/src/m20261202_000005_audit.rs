//! Who made each change, and an order's history by index.
//!
//! Every event gets its actor (type, subject, name; events from before read back as the
//! system actor `unknown`) and the id of the order it is about, indexed with `seq` so that
//! `GET /api/v1/orders/{id}/history` reads one range of the index however long the log
//! is. Existing events are given their order id from their data.
//!
//! Sessions keep what decides an OIDC principal's role later: whether the issuer said the
//! e-mail was verified, and the role its role claim named. Sessions from before were made
//! under the rule that a session's e-mail counts as verified, so they keep that.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    ActorType,
    ActorSubject,
    ActorName,
    OrderId,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    EmailVerified,
    ClaimedRole,
}

const INDEX: &str = "ix_events_order_id_seq";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite takes one column per ALTER TABLE.
        for column in [
            Events::ActorType,
            Events::ActorSubject,
            Events::ActorName,
            Events::OrderId,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Events::Table)
                        .add_column(ColumnDef::new(column).text().null())
                        .to_owned(),
                )
                .await?;
        }
        let backfill = match manager.get_database_backend() {
            DbBackend::Postgres => {
                "UPDATE events SET order_id = CASE WHEN kind = 'notification.updated' \
                 THEN (data::jsonb)->>'order_id' ELSE (data::jsonb)->>'id' END \
                 WHERE kind IN ('order.created', 'order.updated', 'order.deleted', \
                 'notification.updated')"
            }
            _ => {
                "UPDATE events SET order_id = CASE WHEN kind = 'notification.updated' \
                 THEN json_extract(data, '$.order_id') ELSE json_extract(data, '$.id') END \
                 WHERE kind IN ('order.created', 'order.updated', 'order.deleted', \
                 'notification.updated')"
            }
        };
        manager
            .get_connection()
            .execute_unprepared(backfill)
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Events::Table)
                    .col(Events::OrderId)
                    .col(Events::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(
                        ColumnDef::new(Sessions::EmailVerified)
                            .boolean()
                            .not_null()
                            .default(true),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Sessions::Table)
                    .add_column(ColumnDef::new(Sessions::ClaimedRole).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Events::Table).to_owned())
            .await?;
        for column in [
            Events::ActorType,
            Events::ActorSubject,
            Events::ActorName,
            Events::OrderId,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Events::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in [Sessions::EmailVerified, Sessions::ClaimedRole] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sessions::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
