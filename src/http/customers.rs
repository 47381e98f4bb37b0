//! /api/v1/customers

use super::body::{Form, JsonObject, text};
use super::openapi::{PROBLEM_JSON, Problem, Routes};
use super::params::PageQuery;
use super::params::{Params, path_id};
use super::problem::ApiError;
use super::{AppState, created, idempotency_key, ok, write};
use crate::auth::Principal;
use crate::auth::role::Role;
use crate::domain::customer::{CustomerCode, CustomerPatch, NewCustomer, parse_email, parse_name};
use crate::domain::phone::Phone;
use crate::domain::views::{CustomerView, OrderView, Page};
use crate::store::ops::WriteOp;
use crate::store::reader::{GetCustomer, ListCustomers, ListOrders};
use crate::store::reads::OrderFilter;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

pub fn routes(api: &mut Routes) {
    api.add_for(Role::Viewer, __path_list, list)
        .add_for(Role::Staff, __path_create, create)
        .add_for(Role::Viewer, __path_get, get)
        .add_for(Role::Staff, __path_update, update)
        .add_for(Role::Admin, __path_delete, delete)
        .add_for(Role::Viewer, __path_orders, orders);
}

/// The body of `POST /api/v1/customers`, as `create` reads it field by field (unknown
/// fields are refused). Only describes the body for the OpenAPI document.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Amina Njeri", "phone": "+254722000001", "code": "AMINA-01", "email": "amina@example.com"}))]
pub struct NewCustomerBody {
    /// 1..200 characters after trimming.
    #[schema(min_length = 1, max_length = 200, example = "Amina Njeri")]
    name: String,
    /// E.164, or a national number in the configured default region; a mobile number.
    #[schema(example = "+254722000001")]
    phone: String,
    /// Generated when absent or null; normalised to upper case.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$", example = "AMINA-01")]
    code: Option<String>,
    #[schema(format = Email, example = "amina@example.com")]
    email: Option<String>,
}

/// The body of `PATCH /api/v1/customers/{id}`: only the given fields change; `email: null`
/// removes the email; `null` for any other field is refused.
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Amina W. Njeri", "email": null}))]
pub struct CustomerPatchBody {
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(nullable = false, pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$")]
    code: Option<String>,
    #[schema(nullable = false)]
    phone: Option<String>,
    #[schema(format = Email)]
    email: Option<String>,
}

/// The filter of `GET /api/v1/customers` (and of its CSV export).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CustomerFilterQuery {
    /// Case-insensitive substring of name, code, phone or email.
    #[param(min_length = 1)]
    q: Option<String>,
}

/// Customers, newest first.
#[utoipa::path(get, path = "/api/v1/customers", tag = "customers", params(CustomerFilterQuery, PageQuery),
    responses((status = 200, description = "A page of customers", body = Page<CustomerView>)))]
async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = Params::of(&req);
    let msg = ListCustomers {
        q: params.text("q")?,
        page: params.page()?,
    };
    ok(state.reader.send(msg).await??)
}

/// Creates a customer.
#[utoipa::path(post, path = "/api/v1/customers", tag = "customers",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for a repeated request (1..255 visible ASCII)")),
    request_body = NewCustomerBody,
    responses(
        (status = 201, description = "Created (`Location` names it)", body = CustomerView),
        (status = 409, description = "Phone or code already used, or the idempotency key was used with another body", body = Problem, content_type = PROBLEM_JSON),
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
    created("/api/v1/customers", write(&state, &principal, op).await?)
}

/// One customer.
#[utoipa::path(get, path = "/api/v1/customers/{id}", tag = "customers", params(("id" = String, Path, description = "Customer id (UUID)")),
    responses(
        (status = 200, description = "The customer", body = CustomerView),
        (status = 404, description = "No such customer", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "customer")?;
    ok(state.reader.send(GetCustomer { id }).await??)
}

/// Changes the given fields of a customer.
#[utoipa::path(patch, path = "/api/v1/customers/{id}", tag = "customers", params(("id" = String, Path, description = "Customer id (UUID)")),
    request_body = CustomerPatchBody,
    responses(
        (status = 200, description = "The changed customer", body = CustomerView),
        (status = 404, description = "No such customer", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Phone or code already used", body = Problem, content_type = PROBLEM_JSON),
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
    let id = path_id(&id, "customer")?;
    let mut f = Form::new(body);
    let patch = CustomerPatch {
        name: f.optional("name", text(parse_name)),
        code: f.optional("code", text(CustomerCode::parse)),
        phone: f.optional("phone", text(|s| Phone::parse(s, state.region))),
        email: f.nullable("email", text(parse_email)),
    };
    f.finish()?;
    super::reply(write(&state, &principal, WriteOp::UpdateCustomer { id, patch }).await?)
}

/// Deletes a customer that has no orders.
#[utoipa::path(delete, path = "/api/v1/customers/{id}", tag = "customers", params(("id" = String, Path, description = "Customer id (UUID)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such customer", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The customer has orders", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn delete(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "customer")?;
    super::reply(write(&state, &principal, WriteOp::DeleteCustomer { id }).await?)
}

/// A customer's orders, newest first.
#[utoipa::path(get, path = "/api/v1/customers/{id}/orders", tag = "customers", params(("id" = String, Path, description = "Customer id (UUID)"), PageQuery),
    responses(
        (status = 200, description = "A page of the customer's orders", body = Page<OrderView>),
        (status = 404, description = "No such customer", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn orders(
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id, "customer")?;
    let page = Params::of(&req).page()?;
    state.reader.send(GetCustomer { id }).await??;
    let filter = OrderFilter {
        customer_id: Some(id),
        ..OrderFilter::default()
    };
    ok(state.reader.send(ListOrders { filter, page }).await??)
}
