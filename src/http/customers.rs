//! /api/v1/customers

use super::body::{Form, JsonObject, text};
use super::params::{Params, path_id};
use super::problem::ApiError;
use super::{AppState, created, idempotency_key, ok, write};
use crate::auth::Principal;
use crate::domain::customer::{CustomerCode, CustomerPatch, NewCustomer, parse_email, parse_name};
use crate::domain::phone::Phone;
use crate::store::reads::OrderFilter;
use crate::store::repository::{GetCustomer, ListCustomers, ListOrders};
use crate::store::writes::WriteOp;
use actix_web::{HttpRequest, HttpResponse, web};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/customers")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(
        super::resource("/customers/{id}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(delete)),
    )
    .service(super::resource("/customers/{id}/orders").route(web::get().to(orders)));
}

async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req);
    let msg = ListCustomers {
        q: params.text("q")?,
        page: params.page()?,
    };
    ok(state.repo.send(msg).await??)
}

async fn create(
    state: web::Data<AppState>,
    principal: Principal,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let idem = idempotency_key(&req, &principal, "POST /customers", &body)?;
    let mut f = Form::new(body);
    let name = f.required("name", text(parse_name));
    let phone = f.required("phone", text(|s| Phone::parse(s, state.region)));
    let code = f.nullable("code", text(CustomerCode::parse)).flatten();
    let email = f.nullable("email", text(parse_email)).flatten();
    f.finish()?;
    let (Some(name), Some(phone)) = (name, phone) else {
        return Err(ApiError::Internal("validated fields missing".into()));
    };
    let op = WriteOp::CreateCustomer {
        customer: NewCustomer {
            name,
            code,
            phone,
            email,
        },
        idem,
    };
    created("/api/v1/customers", write(&state, op).await?)
}

async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "customer")?;
    ok(state.repo.send(GetCustomer { id }).await??)
}

async fn update(
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "customer")?;
    let mut f = Form::new(body);
    let patch = CustomerPatch {
        name: f.optional("name", text(parse_name)),
        code: f.optional("code", text(CustomerCode::parse)),
        phone: f.optional("phone", text(|s| Phone::parse(s, state.region))),
        email: f.nullable("email", text(parse_email)),
    };
    f.finish()?;
    super::reply(write(&state, WriteOp::UpdateCustomer { id, patch }).await?)
}

async fn delete(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "customer")?;
    super::reply(write(&state, WriteOp::DeleteCustomer { id }).await?)
}

async fn orders(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "customer")?;
    let page = Params::of(&req).page()?;
    state.repo.send(GetCustomer { id }).await??;
    let filter = OrderFilter {
        customer_id: Some(id),
        ..OrderFilter::default()
    };
    ok(state.repo.send(ListOrders { filter, page }).await??)
}
