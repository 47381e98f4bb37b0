//! sea-orm entities, one module per table (see `migrations/` for the schema).

pub mod customer {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "customers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub code: String,
        pub phone: String,
        pub email: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub order_number: String,
        pub customer_id: Uuid,
        pub item: String,
        pub quantity: i32,
        pub amount_minor: i64,
        pub currency: String,
        pub status: crate::domain::order::OrderStatus,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notification {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notifications")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub order_id: Uuid,
        pub customer_id: Uuid,
        pub phone: String,
        pub message: String,
        pub status: crate::domain::notification::NotificationStatus,
        pub attempts: i32,
        pub provider: Option<String>,
        pub provider_message_id: Option<String>,
        pub cost: Option<String>,
        pub error: Option<String>,
        /// When the dispatcher should next try (queued rows), in epoch milliseconds.
        pub next_attempt_at: Option<i64>,
        /// Unused since claims carry the sender's epoch (`sender_epoch`); older rows may
        /// still hold the end of the lease they were claimed under (local clock).
        pub lease_until: Option<i64>,
        /// Made by "send again" (not by the order's creation or a status change).
        pub resend: bool,
        pub created_at: i64,
        pub updated_at: i64,
        /// The SMS sender's epoch (`sms_sender.epoch`) the row was last claimed under; with
        /// `attempts`, the claim's token. NULL before the first claim (and for rows claimed
        /// before epochs existed).
        pub sender_epoch: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The SMS sender's lease: one row (`id = 1`), see `sms::lease`.
pub mod sms_sender {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sms_sender")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        /// The instance id of the sender (`data_dir/instance-id`); empty before the first.
        pub holder: String,
        /// Which start of that instance holds it (a UUID v7, so later boots sort after).
        pub boot: String,
        /// Goes up whenever the lease is taken rather than renewed.
        pub epoch: i64,
        /// Epoch milliseconds on the database's clock.
        pub expires_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub kind: String,
        pub at: i64,
        /// The event's `data` as JSON text.
        pub data: String,
        /// Who made the change (`domain::event::Actor`); NULL before actors were recorded.
        pub actor_type: Option<String>,
        pub actor_subject: Option<String>,
        pub actor_name: Option<String>,
        /// The order the event is about (`order.*`, `notification.updated`).
        pub order_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod idempotency_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub principal: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub route: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub request_hash: String,
        pub status: i32,
        pub body: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod session {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id_hash: String,
        pub subject: String,
        pub name: Option<String>,
        pub email: Option<String>,
        pub mode: String,
        /// The issuer said the e-mail was verified (OIDC sign-ins).
        pub email_verified: bool,
        /// The highest role `auth.oidc.role_claim` named at sign-in.
        pub claimed_role: Option<String>,
        pub created_at: i64,
        pub expires_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
