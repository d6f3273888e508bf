//! The primary's enrollment door: where a joining worker's certificate request is
//! signed. The daemon answers on a Unix socket only NGINX's user reaches
//! ([`SOCKET`], its directory root's and NGINX's group's); NGINX puts it at
//! `https://PRIMARY/stack-enroll`, for worker addresses, POST only, with the peer's
//! address in `X-Real-IP` (its own, set from the connection, whatever the client
//! sent). The request is a small JSON document ([`crate::workers::EnrollRequest`]);
//! the answer is the certificate, or 403 and one word — why is in the journal.

use crate::stack::Stack;
use crate::workers::EnrollRequest;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

pub const DIR: &str = "/run/analytics-stackd";
pub const SOCKET: &str = "/run/analytics-stackd/enroll.sock";

/// The most a request may hold (a CSR is under 1 KiB).
const BODY_MAX: usize = 16 << 10;

/// Lets NGINX's user reach the socket: the directory becomes root's and its group's
/// (0750). Until that user exists (NGINX not installed yet) the directory is root's
/// alone; `worker add` calls this again after its apply.
pub fn grant_door_access() {
    let group = nix::unistd::Group::from_name(crate::components::nginx::USER)
        .ok()
        .flatten();
    let (gid, mode) = match group {
        Some(g) => (Some(g.gid), 0o750),
        None => (None, 0o700),
    };
    if let Err(e) = nix::unistd::chown(Path::new(DIR), Some(nix::unistd::Uid::from_raw(0)), gid)
        .map_err(std::io::Error::from)
        .and_then(|()| std::fs::set_permissions(DIR, std::fs::Permissions::from_mode(mode)))
    {
        tracing::warn!("{DIR}: {e}");
    }
}

/// Listens for the daemon's lifetime.
pub async fn serve(stack: Arc<Stack>) -> std::io::Result<()> {
    std::fs::create_dir_all(DIR)?;
    std::fs::set_permissions(DIR, std::fs::Permissions::from_mode(0o700))?;
    match std::fs::remove_file(SOCKET) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(SOCKET)?;
    // Reached through the directory's permissions.
    std::fs::set_permissions(SOCKET, std::fs::Permissions::from_mode(0o666))?;
    grant_door_access();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("enrollment door: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let stack = stack.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let stack = stack.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&stack, request).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .max_buf_size(BODY_MAX)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A peer that sends nothing is dropped.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), served).await;
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response
}

async fn answer(stack: &Stack, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::POST || request.uri().path() != "/stack-enroll" {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    // NGINX sets it from the connection; without it the request did not come
    // through NGINX.
    let Some(peer) = request
        .headers()
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<std::net::IpAddr>().ok())
    else {
        return text(StatusCode::FORBIDDEN, "refused");
    };
    let body = match Limited::new(request.into_body(), BODY_MAX).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "too large"),
    };
    let Ok(enroll) = serde_json::from_slice::<EnrollRequest>(&body) else {
        tracing::warn!("enrollment from {peer} refused: not an enrollment request");
        return text(StatusCode::BAD_REQUEST, "not an enrollment request");
    };
    match stack.enroll(&enroll, peer) {
        Ok(cert) => {
            tracing::info!(
                "enrollment: signed worker {}'s certificate ({peer})",
                enroll.name
            );
            let mut response = text(StatusCode::OK, cert.trim_end());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-pem-file"),
            );
            response
        }
        Err(refusal) => {
            tracing::warn!("enrollment from {peer} refused: {refusal}");
            text(StatusCode::FORBIDDEN, "refused")
        }
    }
}
