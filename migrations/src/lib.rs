//! Schema migrations for duka, one file per migration, applied in order.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_initial;
mod m20261122_000002_sessions;
mod m20261201_000003_stats_index;
mod m20261201_000004_notification_resend;
mod m20261202_000005_audit;
mod m20261202_000006_sms_sender;
mod m20261202_000007_deployment;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_initial::Migration),
            Box::new(m20261122_000002_sessions::Migration),
            Box::new(m20261201_000003_stats_index::Migration),
            Box::new(m20261201_000004_notification_resend::Migration),
            Box::new(m20261202_000005_audit::Migration),
            Box::new(m20261202_000006_sms_sender::Migration),
            Box::new(m20261202_000007_deployment::Migration),
        ]
    }
}
