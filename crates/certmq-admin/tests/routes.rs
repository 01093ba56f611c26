//! The router against its own OpenAPI table: every documented route is
//! served (never the "no such route" fallback), with and without the token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use certmq_admin::{openapi::ROUTES, AdminState, ServerCerts};
use tower::ServiceExt;

fn state(dir: &std::path::Path) -> AdminState {
    let store: Arc<dyn certmq_store::Store> =
        Arc::new(certmq_store::SqliteStore::open(dir).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minted = certmq_pki::mint_default(&[], None, now).unwrap();
    let chain = format!("{}{}", minted.cert_pem, minted.ca_cert_pem);
    let cert =
        certmq_pki::validate_server_cert(chain.as_bytes(), minted.key_pem.as_bytes(), now).unwrap();
    let resolver = Arc::new(certmq_pki::SniResolver::new(Default::default()));
    let server_certs =
        ServerCerts::load(store.clone(), resolver, cert.info, cert.certified).unwrap();
    let broker = certmq_core::Broker::new(Default::default());
    let live = Arc::new(certmq_net::Live::default());
    let devices = certmq_admin::Devices::load(
        store.clone(),
        Default::default(),
        broker.clone(),
        live.clone(),
        Default::default(),
    )
    .unwrap();
    AdminState {
        token: "test-token-0123456789".into(),
        store,
        server_certs,
        broker,
        live,
        devices,
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method.to_uppercase().as_str())
        .uri(format!("/api/v1{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn every_documented_route_is_served_and_guarded() {
    let dir = std::env::temp_dir().join(format!("certmq-admin-routes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let app = certmq_admin::router(state(&dir));
    for (method, path, _, auth) in ROUTES {
        // Disabling the default is refused here (nothing bound): fine, it is routed.
        let concrete = path
            .replace("{id}", "no-such-id")
            .replace("{client_id}", "no-such-client");
        let (status, body) = call(&app, method, &concrete, Some("test-token-0123456789")).await;
        assert!(
            !body.contains("no such route"),
            "{method} {path}: {status} {body}"
        );
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let (status, body) = call(&app, method, &concrete, None).await;
        if *auth {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token: {body}"
            );
            assert!(body.contains("\"code\":\"Unauthorized\""), "{body}");
        } else {
            assert_eq!(status, StatusCode::OK, "{method} {path}");
        }
    }
    // Malformed queries and wrong methods answer in the API's error format.
    let (status, body) = call(
        &app,
        "get",
        "/device-certificates?limit=lots",
        Some("test-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("\"code\":\"InvalidQuery\""), "{body}");
    let (status, body) = call(
        &app,
        "put",
        "/server-certificates",
        Some("test-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body.contains("\"code\":\"MethodNotAllowed\""), "{body}");
    let (status, body) = call(&app, "get", "/nope", Some("test-token-0123456789")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no such route"));
    let (_, metrics) = call(&app, "get", "/metrics", Some("test-token-0123456789")).await;
    for name in [
        "certmq_connections{listener=\"mqtt-tls\"}",
        "certmq_server_certificate_expiry_seconds{id=\"default\"",
        "certmq_received_bytes_total",
        "certmq_sent_packets_total",
        "certmq_device_certificates{status=\"REVOKED\"} 0",
        "certmq_device_certificates{status=\"REVOKED\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The other direction: every (method, path) the router serves is in the
/// documented table (read from the router's source until the table builds
/// the router itself).
#[test]
fn every_served_route_is_documented() {
    let src = include_str!("../src/lib.rs");
    let start = src.find("pub fn router(").unwrap();
    let body = &src[start..];
    let end = body.find("\n}\n").unwrap();
    let body = &body[..end];
    let mut served = Vec::new();
    for call in body.split(".route(").skip(1) {
        let path = call.split('"').nth(1).unwrap();
        for method in ["get", "post", "put", "patch", "delete"] {
            if call.contains(&format!("{method}(")) {
                served.push((method, path));
            }
        }
    }
    assert!(served.len() >= 29, "{served:?}");
    for (method, path) in served {
        assert!(
            ROUTES.iter().any(|(m, p, _, _)| *m == method && *p == path),
            "{method} {path} is served but not in the OpenAPI table"
        );
    }
}
