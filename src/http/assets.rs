//! The dashboard's static files, embedded at compile time so that an installed binary
//! serves them with no files beside it.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpResponse, web};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../web/index.html"),
    },
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

pub fn routes(cfg: &mut web::ServiceConfig) {
    for asset in &ASSETS {
        let (content_type, body) = (asset.content_type, asset.body);
        cfg.route(
            asset.path,
            web::get().to(move || async move {
                HttpResponse::Ok()
                    .insert_header((CONTENT_TYPE, content_type))
                    // Revalidate every time: a new binary must never run an old script.
                    .insert_header((CACHE_CONTROL, "no-cache"))
                    .body(body)
            }),
        );
    }
}
