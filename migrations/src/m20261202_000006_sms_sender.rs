//! One SMS sender at a time for the whole deployment.
//!
//! `sms_sender` holds one row: the lease of the instance that sends (`holder`, the process
//! start `boot`), until `expires_at` on the database's clock, and the `epoch`, which goes up
//! whenever the lease is taken rather than renewed. A notification being sent records the
//! epoch it was claimed under (`sender_epoch`): with `attempts` it is the claim's token, and
//! a claim of an older epoch belongs to a sender that is dead or fenced off. Rows already
//! `sending` have no epoch: the first sender takes them over.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SmsSender {
    Table,
    Id,
    Holder,
    Boot,
    Epoch,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    SenderEpoch,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SmsSender::Table)
                    .col(
                        ColumnDef::new(SmsSender::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(SmsSender::Holder).text().not_null())
                    .col(ColumnDef::new(SmsSender::Boot).text().not_null())
                    .col(ColumnDef::new(SmsSender::Epoch).big_integer().not_null())
                    .col(
                        ColumnDef::new(SmsSender::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Nobody holds it, and it expired long ago: the first instance takes it.
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(SmsSender::Table)
                    .columns([
                        SmsSender::Id,
                        SmsSender::Holder,
                        SmsSender::Boot,
                        SmsSender::Epoch,
                        SmsSender::ExpiresAt,
                    ])
                    .values_panic([1.into(), "".into(), "".into(), 0i64.into(), 0i64.into()])
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Notifications::Table)
                    .add_column(
                        ColumnDef::new(Notifications::SenderEpoch)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Notifications::Table)
                    .drop_column(Notifications::SenderEpoch)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(SmsSender::Table).to_owned())
            .await
    }
}
