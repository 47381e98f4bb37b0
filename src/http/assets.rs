//! The dashboard's static files, embedded at compile time so that an installed binary
//! serves them with no files beside it.
//!
//! Each script and style sheet is also served under a name carrying a hash of its content
//! (`/app.3f2a….js`), cached for a year as immutable; the page refers to those names, so a
//! browser fetches a file again exactly when a new binary changed it. The page itself and
//! the plain names are revalidated on every use (an `ETag` makes that a 304).

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, EntityTag, Header, IfNoneMatch};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const PAGE: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../web/index.html"),
};

/// What the page loads; each gets a content-hashed name too.
const FILES: [Asset; 2] = [
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
];

/// Revalidate every time: a new binary must never run an old script.
const REVALIDATE: &str = "no-cache";
/// The content-hashed names never change their content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One servable representation.
struct Served {
    path: String,
    content_type: &'static str,
    body: web::Bytes,
    etag: EntityTag,
    cache_control: &'static str,
}

fn hash_of(body: &str) -> String {
    hex::encode(&Sha256::digest(body.as_bytes())[..8])
}

/// `/app.js` with hash `h` -> `/app.h.js`.
fn hashed_path(path: &str, hash: &str) -> String {
    match path.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{path}.{hash}"),
    }
}

fn served(path: String, content_type: &'static str, body: String, cache: &'static str) -> Served {
    // Weak: the Compress middleware may send these bytes gzip'd or brotli'd, and a strong
    // tag would promise the same bytes in every encoding.
    let etag = EntityTag::new_weak(hash_of(&body));
    Served {
        path,
        content_type,
        body: web::Bytes::from(body),
        etag,
        cache_control: cache,
    }
}

static SERVED: LazyLock<Vec<Served>> = LazyLock::new(|| {
    let mut out = Vec::new();
    let mut page = PAGE.body.to_string();
    for file in &FILES {
        let hashed = hashed_path(file.path, &hash_of(file.body));
        page = page.replace(&format!("\"{}\"", file.path), &format!("\"{hashed}\""));
        out.push(served(
            hashed,
            file.content_type,
            file.body.to_string(),
            IMMUTABLE,
        ));
        out.push(served(
            file.path.to_string(),
            file.content_type,
            file.body.to_string(),
            REVALIDATE,
        ));
    }
    out.push(served(
        PAGE.path.to_string(),
        PAGE.content_type,
        page,
        REVALIDATE,
    ));
    out
});

fn respond(req: &HttpRequest, asset: &'static Served) -> HttpResponse {
    let fresh = match IfNoneMatch::parse(req) {
        Ok(IfNoneMatch::Any) => true,
        Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(&asset.etag)),
        Err(_) => false,
    };
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((ETAG, asset.etag.to_string()))
        .insert_header((CACHE_CONTROL, asset.cache_control));
    if fresh {
        response.finish()
    } else {
        response
            .insert_header((CONTENT_TYPE, asset.content_type))
            .body(asset.body.clone())
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    for asset in SERVED.iter() {
        cfg.route(
            &asset.path,
            web::get().to(move |req: HttpRequest| async move { respond(&req, asset) }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_file_by_its_hash() {
        let page = SERVED.iter().find(|s| s.path == "/").unwrap();
        let page = std::str::from_utf8(&page.body).unwrap();
        for file in &FILES {
            let hashed = hashed_path(file.path, &hash_of(file.body));
            assert!(
                page.contains(&format!("\"{hashed}\"")),
                "{hashed} not in the page"
            );
            assert!(
                !page.contains(&format!("\"{}\"", file.path)),
                "{}",
                file.path
            );
            let served = SERVED.iter().find(|s| s.path == hashed).unwrap();
            assert_eq!(served.cache_control, IMMUTABLE);
            assert_eq!(&served.body[..], file.body.as_bytes());
        }
        assert_eq!(hashed_path("/app.js", "ab12"), "/app.ab12.js");
    }
}
