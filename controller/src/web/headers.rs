//! The security headers on every board answer.

use axum::http::{HeaderValue, header};
use axum::response::Response;

/// What every answer carries (hyper's own answers to unparsable requests
/// too: [`super::automatic_answers`]), with `cache-control: no-store`
/// where a handler set none ([`secure`]): nothing from elsewhere may run or frame the
/// board, and no URL of it (a login link) leaks in a Referer to another
/// site. `same-origin`, not `no-referrer`: under `no-referrer` a browser
/// sends `Origin: null` with the board's own forms, which the origin check
/// must refuse.
pub(super) const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("strict-transport-security", "max-age=31536000"),
];

pub(super) async fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
