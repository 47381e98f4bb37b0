//! The OpenAPI 3.1 document and the interactive docs.
//!
//! Documented routes are registered through [`Routes::add`], which takes the handler's
//! `#[utoipa::path]` together with the handler: the method and path that are served are the
//! ones that are documented, so the document cannot drift from the routing.

use crate::auth::role::Role;
use actix_web::dev::HttpServiceFactory;
use actix_web::http::Method;
use actix_web::{FromRequest, Handler, HttpResponse, Responder, Route, web};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::path::{HttpMethod, Operation, Paths};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

pub const JSON_PATH: &str = "/api/v1/openapi.json";
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error, as every non-2xx answer carries it (RFC 9457).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:duka:problem:validation",
    "title": "Validation failed",
    "status": 422,
    "detail": "one or more fields are invalid",
    "errors": {"phone": ["is not a valid mobile number for KE"]}
}))]
pub struct Problem {
    /// A URN naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "urn:duka:problem:validation")]
    pub kind: String,
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub detail: String,
    /// Field (or query parameter, or header) name -> messages; on 400 and 422.
    #[schema(nullable = false)]
    pub errors: Option<BTreeMap<String, Vec<String>>>,
}

/// One registered operation.
struct Entry {
    method: Method,
    /// Relative to the group's scope.
    path: String,
    route: Route,
    role: Option<Role>,
}

/// The documented routes of one scope: what it serves and how it is documented.
pub struct Routes {
    prefix: &'static str,
    common: &'static [(u16, &'static str)],
    /// Every operation of this scope names the role it needs (`add_for`).
    with_roles: bool,
    entries: Vec<Entry>,
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
}

/// The extension of an operation in the OpenAPI document that names the role it needs.
pub const ROLE_EXTENSION: &str = "x-duka-role";

impl Routes {
    /// Routes mounted under `prefix` ("" for the root); `common` responses (status,
    /// description) are documented on every operation, e.g. what the scope's middleware answers.
    pub fn new(prefix: &'static str, common: &'static [(u16, &'static str)]) -> Self {
        Self {
            prefix,
            common,
            with_roles: false,
            entries: Vec::new(),
            paths: Paths::new(),
            schemas: Vec::new(),
        }
    }

    /// Like `new`, for a scope whose every operation needs a role (`add_for`): a route
    /// added without one would be a route nobody decided about, and is refused.
    pub fn with_roles(prefix: &'static str, common: &'static [(u16, &'static str)]) -> Self {
        Self {
            with_roles: true,
            ..Self::new(prefix, common)
        }
    }

    /// Serves `handler` at the methods and full path documented by `doc` (the `__path_x`
    /// struct that `#[utoipa::path]` generates beside handler `x`).
    pub fn add<P, F, Args>(&mut self, doc: P, handler: F) -> &mut Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        assert!(
            !self.with_roles,
            "{} needs a role: register it with add_for",
            P::path()
        );
        self.push(doc, handler, None)
    }

    /// As `add`, for principals with at least `role`: others get 403 before the handler
    /// runs. The document names the role (in the description and as `x-duka-role`).
    pub fn add_for<P, F, Args>(&mut self, role: Role, doc: P, handler: F) -> &mut Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        assert!(
            self.with_roles,
            "{} is in a scope without principals: register it with add",
            P::path()
        );
        self.push(doc, handler, Some(role))
    }

    fn push<P, F, Args>(&mut self, doc: P, handler: F, role: Option<Role>) -> &mut Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let _ = doc;
        let full = P::path();
        let path = match full.strip_prefix(self.prefix) {
            Some(rest) if !rest.is_empty() => rest.to_string(),
            _ => panic!("{full} is documented outside its scope {:?}", self.prefix),
        };
        let methods = P::methods();
        let mut operation = P::operation();
        self.add_common_responses(&mut operation);
        if let Some(role) = role {
            document_role(&mut operation, role);
        }
        for method in &methods {
            let method = to_actix(method);
            let route = web::route().method(method.clone()).to(handler.clone());
            let route = match role {
                Some(role) => route.wrap(actix_web::middleware::from_fn(move |req, next| {
                    crate::auth::require_role(role, req, next)
                })),
                None => route,
            };
            self.entries.push(Entry {
                route,
                method,
                path: path.clone(),
                role,
            });
        }
        self.paths.add_path_operation(full, methods, operation);
        P::schemas(&mut self.schemas);
        self
    }

    /// Every (method, full path, role needed) served, as registered.
    pub fn roles(&self) -> Vec<(Method, String, Option<Role>)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.method.clone(),
                    format!("{}{}", self.prefix, e.path),
                    e.role,
                )
            })
            .collect()
    }

    fn add_common_responses(&self, operation: &mut Operation) {
        for (status, description) in self.common {
            operation
                .responses
                .responses
                .entry(status.to_string())
                .or_insert_with(|| problem_response(description));
        }
    }

    /// Every (method, full path) served, as registered.
    pub fn operations(&self) -> Vec<(Method, String)> {
        self.entries
            .iter()
            .map(|e| (e.method.clone(), format!("{}{}", self.prefix, e.path)))
            .collect()
    }

    /// Registers one resource per path (unsupported methods answer 405), in the order added.
    pub fn register(self, cfg: &mut web::ServiceConfig) {
        let mut by_path: Vec<(String, Vec<Route>)> = Vec::new();
        for entry in self.entries {
            match by_path.iter_mut().find(|(p, _)| *p == entry.path) {
                Some((_, routes)) => routes.push(entry.route),
                None => by_path.push((entry.path, vec![entry.route])),
            }
        }
        for (path, routes) in by_path {
            cfg.service(
                routes
                    .into_iter()
                    .fold(super::resource(&path), |resource, route| {
                        resource.route(route)
                    }),
            );
        }
    }
}

/// Says in the document which role an operation needs, and that others get 403.
fn document_role(operation: &mut Operation, role: Role) {
    let note = format!("Needs the `{role}` role (or a higher one).");
    operation.description = Some(match operation.description.take() {
        Some(text) if !text.is_empty() => format!("{text}\n\n{note}"),
        _ => note,
    });
    operation
        .extensions
        .get_or_insert_with(Default::default)
        .merge(
            utoipa::openapi::extensions::ExtensionsBuilder::new()
                .add(ROLE_EXTENSION, role.as_str())
                .build(),
        );
    operation
        .responses
        .responses
        .entry("403".to_string())
        .or_insert_with(|| {
            problem_response(&format!(
                "The principal's role is below `{role}`: nothing was changed"
            ))
        });
}

fn to_actix(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                ))))
                .build(),
        )
        .build()
        .into()
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token from `auth.tokens` (or the one generated at first start)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "duka",
        description = "Orders, SMS notifications and live updates for businesses that take orders. \
            Errors are RFC 9457 problem documents (`application/problem+json`).",
    ),
    modifiers(&BearerScheme),
    components(schemas(Problem)),
    security(("bearer" = [])),
    tags(
        (name = "customers", description = "People who order"),
        (name = "orders", description = "Orders and their SMS notifications"),
        (name = "notifications", description = "SMS notifications"),
        (name = "auth", description = "Who is calling"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct Base;

/// The document for `groups`.
pub fn document(groups: &[&Routes]) -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    for group in groups {
        doc.paths.merge(group.paths.clone());
        for (name, schema) in &group.schemas {
            components
                .schemas
                .entry(name.clone())
                .or_insert_with(|| schema.clone());
        }
    }
    doc
}

/// The served document, built once from the routes the app registers.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let routes = super::api_routes();
        let doc = document(&routes.groups());
        doc.to_pretty_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document does not serialise");
            String::from("{}")
        })
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}

pub const DOCS: &str = "/docs";

/// `/docs`: Swagger UI from files inside the binary, reading [`JSON_PATH`].
pub fn docs() -> impl HttpServiceFactory {
    let config = utoipa_swagger_ui::Config::new([JSON_PATH])
        // The validator badge would load an image from validator.swagger.io.
        .validator_url("none")
        .try_it_out_enabled(true)
        .persist_authorization(false);
    utoipa_swagger_ui::SwaggerUi::new(format!("{DOCS}/{{_:.*}}")).config(config)
}

/// `/docs` -> `/docs/`, where the page's relative asset links resolve.
pub async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((actix_web::http::header::LOCATION, format!("{DOCS}/")))
        .finish()
}
