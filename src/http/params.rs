//! Query parameters: an empty or malformed value is a 400 naming the parameter.

use super::problem::ApiError;
use crate::store::reads::{MAX_LIMIT, PageRequest, decode_cursor};
use actix_web::HttpRequest;
use std::collections::HashMap;
use uuid::Uuid;

pub struct Params(HashMap<String, String>);

/// The longest free-text query parameter.
pub const MAX_TEXT: usize = 200;

impl Params {
    pub fn of(req: &HttpRequest) -> Self {
        Self(
            url::form_urlencoded::parse(req.query_string().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// A present parameter must not be empty, nor hold U+0000 (which PostgreSQL refuses).
    pub fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Err(ApiError::bad_param(name, "must not be empty")),
            Some(v) if v.contains('\0') => Err(ApiError::bad_param(name, super::body::NUL_REFUSED)),
            Some(v) => Ok(Some(v.as_str())),
        }
    }

    pub fn parse<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        self.get(name)?
            .map(|v| parse(v).map_err(|e| ApiError::bad_param(name, e)))
            .transpose()
    }

    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.parse(name, |v| {
            Uuid::parse_str(v).map_err(|_| "must be a UUID".into())
        })
    }

    /// Free text such as a search (`q`): at most `MAX_TEXT` characters, so that a search
    /// cannot be made arbitrarily expensive.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        let Some(v) = self.get(name)? else {
            return Ok(None);
        };
        let v = v.trim();
        if v.chars().count() > MAX_TEXT {
            return Err(ApiError::bad_param(
                name,
                format!("must be at most {MAX_TEXT} characters"),
            ));
        }
        Ok(Some(v.to_string()))
    }

    pub fn page(&self) -> Result<PageRequest, ApiError> {
        let limit = self
            .parse("limit", |v| match v.parse::<u64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(format!("must be an integer from 1 to {MAX_LIMIT}")),
            })?
            .unwrap_or(PageRequest::default().limit);
        let after = self.parse("cursor", |v| {
            decode_cursor(v).ok_or_else(|| "is not a cursor from a previous page".to_string())
        })?;
        Ok(PageRequest { limit, after })
    }
}

/// An id in the path; anything that is not a UUID names no resource.
pub fn path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("no such {what}")))
}

/// `?limit=&cursor=` of every list (documentation of what `Params::page` reads).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}
