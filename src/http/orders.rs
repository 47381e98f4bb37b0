//! /api/v1/orders and an order's notifications

use super::body::{Form, JsonObject, amount, integer, text};
use super::params::{Params, path_id};
use super::problem::ApiError;
use super::{AppState, created, idempotency_key, ok, write};
use crate::auth::Principal;
use crate::domain::customer::{CustomerCode, bounded_text};
use crate::domain::money::Currency;
use crate::domain::order::{
    CustomerRef, ITEM_MAX, NewOrder, OrderPatch, OrderStatus, parse_quantity,
};
use crate::domain::time::DateBound;
use crate::store::reads::{NotificationFilter, OrderFilter};
use crate::store::repository::{GetOrder, ListNotifications, ListOrders};
use crate::store::writes::WriteOp;
use actix_web::{HttpRequest, HttpResponse, web};
use uuid::Uuid;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/orders")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(
        super::resource("/orders/{id}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(delete)),
    )
    .service(
        super::resource("/orders/{id}/notifications")
            .route(web::get().to(notifications))
            .route(web::post().to(resend)),
    )
    .service(super::resource("/notifications").route(web::get().to(all_notifications)));
}

fn item(s: &str) -> Result<String, String> {
    bounded_text(s, ITEM_MAX)
}

async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req);
    let start = params.parse("start_date", DateBound::parse)?;
    let end = params.parse("end_date", DateBound::parse)?;
    let (start, end) = (start.map(DateBound::start), end.map(DateBound::end));
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(ApiError::bad_param(
            "start_date",
            "must not be after end_date",
        ));
    }
    let filter = OrderFilter {
        customer_id: params.uuid("customer_id")?,
        status: params.parse("status", OrderStatus::parse)?,
        q: params.text("q")?,
        start,
        end,
    };
    let page = params.page()?;
    ok(state.repo.send(ListOrders { filter, page }).await??)
}

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
        write(&state, WriteOp::CreateOrder { order, idem }).await?,
    )
}

async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    ok(state.repo.send(GetOrder { id }).await??)
}

async fn update(
    state: web::Data<AppState>,
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
    super::reply(write(&state, WriteOp::UpdateOrder { id, patch }).await?)
}

async fn delete(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    super::reply(write(&state, WriteOp::DeleteOrder { id }).await?)
}

async fn notifications(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "order")?;
    let page = Params::of(&req).page()?;
    state.repo.send(GetOrder { id }).await??;
    let filter = NotificationFilter {
        order_id: Some(id),
        ..NotificationFilter::default()
    };
    ok(state
        .repo
        .send(ListNotifications { filter, page })
        .await??)
}

async fn resend(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order_id = path_id(&id, "order")?;
    let reply = write(&state, WriteOp::QueueNotification { order_id }).await?;
    super::reply_with(actix_web::http::StatusCode::ACCEPTED, reply)
}

async fn all_notifications(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req);
    let filter = NotificationFilter {
        order_id: params.uuid("order_id")?,
        status: params.parse(
            "status",
            crate::domain::notification::NotificationStatus::parse,
        )?,
    };
    let page = params.page()?;
    ok(state
        .repo
        .send(ListNotifications { filter, page })
        .await??)
}
