//! /api/v1/orders and an order's notifications

use super::body::{Form, JsonObject, amount, integer, text};
use super::openapi::{PROBLEM_JSON, Problem, Routes};
use super::params::PageQuery;
use super::params::{Params, path_id};
use super::problem::ApiError;
use super::{AppState, created, idempotency_key, ok, write};
use crate::auth::Principal;
use crate::auth::role::Role;
use crate::domain::customer::{CustomerCode, bounded_text};
use crate::domain::money::Currency;
use crate::domain::notification::NotificationStatus;
use crate::domain::order::{
    CustomerRef, ITEM_MAX, NewOrder, OrderPatch, OrderStatus, parse_quantity,
};
use crate::domain::time::DateBound;
use crate::domain::views::{NotificationView, OrderView, Page};
use crate::store::ops::WriteOp;
use crate::store::reader::{GetOrder, ListNotifications, ListOrders, OrderHistory};
use crate::store::reads::{NotificationFilter, OrderFilter};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn routes(api: &mut Routes) {
    api.add_for(Role::Viewer, __path_list, list)
        .add_for(Role::Staff, __path_create, create)
        .add_for(Role::Viewer, __path_get, get)
        .add_for(Role::Staff, __path_update, update)
        .add_for(Role::Admin, __path_delete, delete)
        .add_for(Role::Viewer, __path_history, history)
        .add_for(Role::Viewer, __path_notifications, notifications)
        .add_for(Role::Staff, __path_resend, resend)
        .add_for(Role::Viewer, __path_all_notifications, all_notifications);
}

/// Money in: a JSON number or a decimal string, at most 2 decimals, over 0 and at most
/// 999999999.99, no exponent.
fn amount_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0))
                .maximum(Some(999_999_999.99))
                .multiple_of(Some(0.01)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[0-9]{1,9}(\.[0-9]{1,2})?$")),
        )
        .examples([serde_json::json!("1200.00")])
        .build();
    utoipa::openapi::Schema::OneOf(one_of)
}

/// The body of `POST /api/v1/orders`, as `create` reads it field by field (unknown fields
/// are refused). Exactly one of `customer_id` and `customer_code`. Only describes the body
/// for the OpenAPI document.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_code": "AMINA-01", "item": "Laptop", "amount": "1200.00", "quantity": 1, "currency": "KES"}))]
pub struct NewOrderBody {
    #[schema(nullable = false)]
    customer_id: Option<Uuid>,
    #[schema(nullable = false, pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$")]
    customer_code: Option<String>,
    /// 1..200 characters.
    #[schema(min_length = 1, max_length = 200, example = "Laptop")]
    item: String,
    /// The order's total (not a unit price).
    #[schema(schema_with = amount_schema)]
    amount: String,
    /// Default 1.
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    quantity: Option<i64>,
    /// ISO 4217; default from `orders.default_currency`.
    #[schema(nullable = false, pattern = "^[A-Za-z]{3}$", example = "KES")]
    currency: Option<String>,
}

/// The body of `PATCH /api/v1/orders/{id}`: only the given fields change; `null` is refused.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"status": "confirmed"}))]
pub struct OrderPatchBody {
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    item: Option<String>,
    #[schema(nullable = false, minimum = 1, maximum = 1000000)]
    quantity: Option<i64>,
    #[schema(schema_with = amount_schema)]
    amount: Option<String>,
    /// pending -> confirmed -> shipped -> delivered; cancelled before delivered (else 409).
    #[schema(nullable = false)]
    status: Option<OrderStatus>,
}

/// The filters of `GET /api/v1/orders` (and of its CSV export).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OrderFilterQuery {
    customer_id: Option<Uuid>,
    status: Option<OrderStatus>,
    /// Case-insensitive substring of item, order number, customer name or code.
    #[param(min_length = 1)]
    q: Option<String>,
    /// Inclusive: `YYYY-MM-DD` (a day in `business.timezone`) or an RFC 3339 instant.
    #[param(min_length = 1, example = "2026-11-01")]
    start_date: Option<String>,
    /// Inclusive: `YYYY-MM-DD` (a day in `business.timezone`) or an RFC 3339 instant.
    #[param(min_length = 1, example = "2026-11-30")]
    end_date: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct NotificationQuery {
    status: Option<NotificationStatus>,
    order_id: Option<Uuid>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    #[param(min_length = 1)]
    cursor: Option<String>,
}

fn item(s: &str) -> Result<String, String> {
    bounded_text(s, ITEM_MAX)
}

/// Orders, newest first, filtered.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", params(OrderFilterQuery, PageQuery),
    responses((status = 200, description = "A page of orders", body = Page<OrderView>)))]
async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req);
    let filter = order_filter(&params, state.timezone)?;
    let page = params.page()?;
    ok(state.reader.send(ListOrders { filter, page }).await??)
}

/// The filters of `GET /api/v1/orders` (and of its CSV export); dates are days in `tz`.
pub fn order_filter(params: &Params, tz: chrono_tz::Tz) -> Result<OrderFilter, ApiError> {
    let start = params.parse("start_date", DateBound::parse)?;
    let end = params.parse("end_date", DateBound::parse)?;
    let (start, end) = (start.map(|b| b.start(tz)), end.map(|b| b.end(tz)));
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(ApiError::bad_param(
            "start_date",
            "must not be after end_date",
        ));
    }
    Ok(OrderFilter {
        customer_id: params.uuid("customer_id")?,
        status: params.parse("status", OrderStatus::parse)?,
        q: params.text("q")?,
        start,
        end,
    })
}

/// Creates an order, queues its SMS and publishes `order.created`, all or nothing.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for a repeated request (1..255 visible ASCII)")),
    request_body = NewOrderBody,
    responses(
        (status = 201, description = "Created (`Location` names it)", body = OrderView),
        (status = 409, description = "The idempotency key was used with another body", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid fields, each named in `errors`", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn create(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let idem = idempotency_key(&req, &principal, "POST /orders", &body)?;
    let mut f = Form::new(body);
    let by_id = f.optional(
        "customer_id",
        text(|s| Uuid::parse_str(s.trim()).map_err(|_| "must be a UUID".to_string())),
    );
    let by_code = f.optional(
        "customer_code",
        text(|s| CustomerCode::parse(s).map(CustomerCode::into_string)),
    );
    let item = f.required("item", text(item));
    let amount = f.required("amount", amount());
    let quantity = f.optional("quantity", integer(parse_quantity)).unwrap_or(1);
    let currency = f
        .optional("currency", text(Currency::parse))
        .unwrap_or(state.currency);
    let customer = match (by_id, by_code) {
        (Some(id), None) => Some(CustomerRef::Id(id)),
        (None, Some(code)) => Some(CustomerRef::Code(code)),
        (Some(_), Some(_)) => {
            f.error("customer_id", "give customer_id or customer_code, not both");
            None
        }
        (None, None) => {
            if !f.has_error("customer_id") && !f.has_error("customer_code") {
                f.error("customer_id", "customer_id or customer_code is required");
            }
            None
        }
    };
    f.finish()?;
    let (Some(customer), Some(item), Some(amount)) = (customer, item, amount) else {
        return Err(ApiError::Internal("validated fields missing".into()));
    };
    let order = NewOrder {
        customer,
        item,
        quantity,
        amount,
        currency,
    };
    created(
        "/api/v1/orders",
        write(&state, &principal, WriteOp::CreateOrder { order, idem }).await?,
    )
}

/// One order.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 404, description = "No such order", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    ok(state.reader.send(GetOrder { id }).await??)
}

/// Changes the given fields of an order; `status` follows the transition rules.
#[utoipa::path(patch, path = "/api/v1/orders/{id}", tag = "orders", params(("id" = String, Path, description = "Order id (UUID)")),
    request_body = OrderPatchBody,
    responses(
        (status = 200, description = "The changed order", body = OrderView),
        (status = 404, description = "No such order", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "A status change the rules forbid", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid fields, each named in `errors`", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn update(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    let mut f = Form::new(body);
    let patch = OrderPatch {
        item: f.optional("item", text(item)),
        quantity: f.optional("quantity", integer(parse_quantity)),
        amount: f.optional("amount", amount()),
        status: f.optional("status", text(OrderStatus::parse)),
    };
    f.finish()?;
    super::reply(write(&state, &principal, WriteOp::UpdateOrder { id, patch }).await?)
}

/// Deletes an order.
#[utoipa::path(delete, path = "/api/v1/orders/{id}", tag = "orders", params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such order", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn delete(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    super::reply(write(&state, &principal, WriteOp::DeleteOrder { id }).await?)
}

/// Every retained event about an order (`order.*`, and `notification.updated` of its
/// notifications), oldest first, in the live frame shape with who made each change. Kept
/// `audit.retention_days`, and readable after the order is deleted.
#[utoipa::path(get, path = "/api/v1/orders/{id}/history", tag = "orders", params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order's events, oldest first", body = History),
        (status = 404, description = "No event about this order is retained", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn history(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    let items = state.reader.send(OrderHistory { id }).await??;
    if items.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no history of order {id} is retained"
        )));
    }
    ok(History { items })
}

/// An order's history.
#[derive(serde::Serialize, ToSchema)]
#[schema(example = json!({"items": [{"type": "order.created", "seq": 41, "at": "2026-11-21T09:30:00.123Z",
    "actor": {"type": "user", "subject": "auth0|42", "name": "Wanjiku"}, "data": {"id": "0193..."}},
    {"type": "notification.updated", "seq": 42, "at": "2026-11-21T09:30:01.002Z",
    "actor": {"type": "system", "name": "sms"}, "data": {"id": "0194...", "status": "sent"}}]}))]
pub struct History {
    /// Events in the live frame shape (`type`, `seq`, `at`, `actor`, `data`), oldest first.
    #[schema(value_type = Vec<Object>)]
    items: Vec<crate::domain::event::Event>,
}

/// An order's SMS notifications, newest first.
#[utoipa::path(get, path = "/api/v1/orders/{id}/notifications", tag = "orders", params(("id" = String, Path, description = "Order id (UUID)"), PageQuery),
    responses(
        (status = 200, description = "A page of the order's notifications", body = Page<NotificationView>),
        (status = 404, description = "No such order", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn notifications(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    let page = Params::of(&req).page()?;
    state.reader.send(GetOrder { id }).await??;
    let filter = NotificationFilter {
        order_id: Some(id),
        ..NotificationFilter::default()
    };
    ok(state
        .reader
        .send(ListNotifications { filter, page })
        .await??)
}

/// Queues a fresh SMS for an order.
#[utoipa::path(post, path = "/api/v1/orders/{id}/notifications", tag = "orders", params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 202, description = "Queued", body = NotificationView),
        (status = 404, description = "No such order", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "SMS notifications are disabled", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn resend(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order_id = path_id(&id, "order")?;
    let reply = write(&state, &principal, WriteOp::QueueNotification { order_id }).await?;
    super::reply_with(actix_web::http::StatusCode::ACCEPTED, reply)
}

/// SMS notifications, newest first, filtered.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", params(NotificationQuery),
    responses((status = 200, description = "A page of notifications", body = Page<NotificationView>)))]
async fn all_notifications(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req);
    let filter = NotificationFilter {
        order_id: params.uuid("order_id")?,
        status: params.parse("status", NotificationStatus::parse)?,
    };
    let page = params.page()?;
    ok(state
        .reader
        .send(ListNotifications { filter, page })
        .await??)
}
