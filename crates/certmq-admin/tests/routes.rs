//! The router against its own OpenAPI table: every documented route is
//! served (never the "no such route" fallback), with and without the token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use certmq_admin::{openapi::OPERATIONS, AdminState, ServerCerts};
use tower::ServiceExt;

fn state(dir: &std::path::Path) -> AdminState {
    let sqlite = Arc::new(certmq_store::SqliteStore::open(dir).unwrap());
    let store: Arc<dyn certmq_registry::store::Store> = sqlite.clone();
    let access = certmq_access::Access::load(sqlite.clone(), &Default::default()).unwrap();
    let console_users = certmq_access::ConsoleUsers::load(sqlite, Default::default()).unwrap();
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
    let control: Arc<dyn certmq_core::Control> = Arc::new(certmq_net::LocalControl {
        broker: broker.clone(),
        live: Arc::new(certmq_net::Live::default()),
    });
    let devices = certmq_admin::Devices::load(
        store.clone(),
        Default::default(),
        control.clone(),
        Default::default(),
    )
    .unwrap();
    AdminState {
        token: "test-token-0123456789".into(),
        server_certs,
        broker,
        control,
        devices,
        access,
        console: certmq_admin::console::Console::new(console_users),
        listeners: Arc::new(Vec::new()),
        node_id: "local".into(),
        started_at: 0,
        cluster: Arc::new(certmq_admin::cluster::SingleNode),
        alarms: Arc::new(certmq_registry::Alarms::default()),
        extra_metrics: Vec::new(),
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
    for o in OPERATIONS {
        let (method, path, auth) = (o.method.as_str().to_lowercase(), o.path, &o.auth);
        // Disabling the default is refused here (nothing bound): fine, it is routed.
        let concrete = path
            .replace("{id}", "no-such-id")
            .replace("{client_id}", "no-such-client");
        let (status, body) = call(&app, &method, &concrete, Some("test-token-0123456789")).await;
        assert!(
            !body.contains("no such route"),
            "{method} {path}: {status} {body}"
        );
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let (status, body) = call(&app, &method, &concrete, None).await;
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

/// The router is built from the contract table: every operation has its
/// handler (none is skipped), and the document lists exactly the table.
#[test]
fn the_router_the_document_and_the_table_agree() {
    assert!(
        certmq_admin::missing_handlers().is_empty(),
        "{:?}",
        certmq_admin::missing_handlers()
    );
    let doc = certmq_admin::openapi::build();
    let mut documented = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            documented += 1;
            let id = op["operationId"].as_str().unwrap();
            let o = certmq_admin::openapi::operation(id).unwrap();
            assert_eq!(
                (o.path, o.method.as_str().to_lowercase()),
                (path.as_str(), method.clone())
            );
        }
    }
    assert_eq!(documented, OPERATIONS.len());
}

/// The generated document is valid OpenAPI 3.1, checked by a real
/// validator (PyPI `openapi-spec-validator`, installed by scripts/test).
#[test]
fn the_document_validates_as_openapi_3_1() {
    let path = std::env::temp_dir().join(format!("certmq-openapi-{}.json", std::process::id()));
    std::fs::write(&path, certmq_admin::openapi::build().to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("python3 (run scripts/test to install the validator)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "openapi-spec-validator (run scripts/test to install it): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
