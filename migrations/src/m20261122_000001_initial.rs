//! Customers, orders, their SMS notifications, the event log and idempotency records.
//!
//! Timestamps are integer milliseconds since the Unix epoch (UTC) and money is an integer
//! number of minor units, so that SQLite and PostgreSQL store and compare them exactly.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    Name,
    Code,
    Phone,
    Email,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    OrderNumber,
    CustomerId,
    Item,
    Quantity,
    AmountMinor,
    Currency,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    OrderId,
    CustomerId,
    Phone,
    Message,
    Status,
    Attempts,
    Provider,
    ProviderMessageId,
    Cost,
    Error,
    NextAttemptAt,
    LeaseUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    Kind,
    At,
    Data,
}

#[derive(DeriveIden)]
enum EventCounter {
    Table,
    Id,
    LastSeq,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Principal,
    Route,
    Key,
    RequestHash,
    Status,
    Body,
    CreatedAt,
}

fn index(name: &str, table: impl IntoIden, columns: Vec<DynIden>) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for column in columns {
        stmt.col(column);
    }
    stmt.to_owned()
}

fn text(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).text().not_null().to_owned()
}

fn text_null(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).text().null().to_owned()
}

fn int8(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).big_integer().not_null().to_owned()
}

fn uuid(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).uuid().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .col(uuid(Customers::Id).primary_key())
                    .col(text(Customers::Name))
                    .col(text(Customers::Code).unique_key())
                    .col(text(Customers::Phone).unique_key())
                    .col(text_null(Customers::Email))
                    .col(int8(Customers::CreatedAt))
                    .col(int8(Customers::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .col(uuid(Orders::Id).primary_key())
                    .col(text(Orders::OrderNumber).unique_key())
                    .col(uuid(Orders::CustomerId))
                    .col(text(Orders::Item))
                    .col(ColumnDef::new(Orders::Quantity).integer().not_null())
                    .col(int8(Orders::AmountMinor))
                    .col(text(Orders::Currency))
                    .col(text(Orders::Status))
                    .col(int8(Orders::CreatedAt))
                    .col(int8(Orders::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_orders_customer")
                            .from(Orders::Table, Orders::CustomerId)
                            .to(Customers::Table, Customers::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .col(uuid(Notifications::Id).primary_key())
                    .col(uuid(Notifications::OrderId))
                    .col(uuid(Notifications::CustomerId))
                    .col(text(Notifications::Phone))
                    .col(text(Notifications::Message))
                    .col(text(Notifications::Status))
                    .col(ColumnDef::new(Notifications::Attempts).integer().not_null())
                    .col(text_null(Notifications::Provider))
                    .col(text_null(Notifications::ProviderMessageId))
                    .col(text_null(Notifications::Cost))
                    .col(text_null(Notifications::Error))
                    .col(
                        ColumnDef::new(Notifications::NextAttemptAt)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Notifications::LeaseUntil)
                            .big_integer()
                            .null(),
                    )
                    .col(int8(Notifications::CreatedAt))
                    .col(int8(Notifications::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_notifications_order")
                            .from(Notifications::Table, Notifications::OrderId)
                            .to(Orders::Table, Orders::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_notifications_customer")
                            .from(Notifications::Table, Notifications::CustomerId)
                            .to(Customers::Table, Customers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(int8(Events::Seq).primary_key())
                    .col(text(Events::Kind))
                    .col(int8(Events::At))
                    .col(text(Events::Data))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EventCounter::Table)
                    .col(
                        ColumnDef::new(EventCounter::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(int8(EventCounter::LastSeq))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(EventCounter::Table)
                    .columns([EventCounter::Id, EventCounter::LastSeq])
                    .values_panic([1.into(), 0i64.into()])
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(text(IdempotencyKeys::Principal))
                    .col(text(IdempotencyKeys::Route))
                    .col(text(IdempotencyKeys::Key))
                    .col(text(IdempotencyKeys::RequestHash))
                    .col(ColumnDef::new(IdempotencyKeys::Status).integer().not_null())
                    .col(text(IdempotencyKeys::Body))
                    .col(int8(IdempotencyKeys::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::Principal)
                            .col(IdempotencyKeys::Route)
                            .col(IdempotencyKeys::Key),
                    )
                    .to_owned(),
            )
            .await?;

        // Every list is newest first by id (UUID v7, time ordered); filters narrow it.
        let indexes = [
            index(
                "ix_orders_customer",
                Orders::Table,
                vec![Orders::CustomerId.into_iden(), Orders::Id.into_iden()],
            ),
            index(
                "ix_orders_status",
                Orders::Table,
                vec![Orders::Status.into_iden(), Orders::Id.into_iden()],
            ),
            index(
                "ix_orders_created_at",
                Orders::Table,
                vec![Orders::CreatedAt.into_iden()],
            ),
            index(
                "ix_notifications_order",
                Notifications::Table,
                vec![
                    Notifications::OrderId.into_iden(),
                    Notifications::Id.into_iden(),
                ],
            ),
            index(
                "ix_notifications_customer",
                Notifications::Table,
                vec![Notifications::CustomerId.into_iden()],
            ),
            index(
                "ix_notifications_status",
                Notifications::Table,
                vec![
                    Notifications::Status.into_iden(),
                    Notifications::Id.into_iden(),
                ],
            ),
            index(
                "ix_notifications_due",
                Notifications::Table,
                vec![
                    Notifications::Status.into_iden(),
                    Notifications::NextAttemptAt.into_iden(),
                ],
            ),
            index(
                "ix_notifications_provider_id",
                Notifications::Table,
                vec![Notifications::ProviderMessageId.into_iden()],
            ),
            index("ix_events_at", Events::Table, vec![Events::At.into_iden()]),
            index(
                "ix_idempotency_created_at",
                IdempotencyKeys::Table,
                vec![IdempotencyKeys::CreatedAt.into_iden()],
            ),
        ];
        for stmt in indexes {
            manager.create_index(stmt).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            IdempotencyKeys::Table.into_iden(),
            EventCounter::Table.into_iden(),
            Events::Table.into_iden(),
            Notifications::Table.into_iden(),
            Orders::Table.into_iden(),
            Customers::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
