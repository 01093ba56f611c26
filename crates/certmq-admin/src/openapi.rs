//! The OpenAPI 3.1 document, generated from [`ROUTES`], the table the
//! router's tests check against the real routes.

use axum::Json;

/// (method, path under /api/v1, summary, needs the token)
pub const ROUTES: &[(&str, &str, &str, bool)] = &[
    ("get", "/health", "Liveness", false),
    ("get", "/openapi.json", "This document", true),
    (
        "get",
        "/server-certificates",
        "List server certificates, the default one included",
        true,
    ),
    (
        "post",
        "/server-certificates",
        "Bind a server certificate {name?, certificate_chain, private_key}",
        true,
    ),
    (
        "get",
        "/server-certificates/{id}",
        "One server certificate",
        true,
    ),
    (
        "delete",
        "/server-certificates/{id}",
        "Unbind a server certificate",
        true,
    ),
    (
        "post",
        "/server-certificates/default/enable",
        "Enable the default server certificate",
        true,
    ),
    (
        "post",
        "/server-certificates/default/disable",
        "Disable the default server certificate (needs a custom one bound)",
        true,
    ),
    (
        "post",
        "/ca-certificates/registration-code",
        "Issue a registration code (replaces the previous one) {registration_code, expires_at}",
        true,
    ),
    ("get", "/ca-certificates", "List CA certificates", true),
    (
        "post",
        "/ca-certificates",
        "Register a CA {ca_certificate, verification_certificate, status?, device_provisioning?, automatic_activation?}",
        true,
    ),
    (
        "get",
        "/ca-certificates/{id}",
        "One CA certificate, with device-certificate counts by status",
        true,
    ),
    (
        "delete",
        "/ca-certificates/{id}",
        "Delete an INACTIVE CA with no ACTIVE device certificates",
        true,
    ),
    (
        "patch",
        "/ca-certificates/{id}",
        "Change device provisioning {device_provisioning?, automatic_activation?}",
        true,
    ),
    ("post", "/ca-certificates/{id}/activate", "Activate a CA", true),
    (
        "post",
        "/ca-certificates/{id}/deactivate",
        "Deactivate a CA (its devices' live connections are closed)",
        true,
    ),
    (
        "get",
        "/device-certificates",
        "List device certificates (?ca_id, client_id, common_name, ou, serial_number, status, expires_before, expires_after, limit, offset)",
        true,
    ),
    (
        "post",
        "/device-certificates",
        "Register a device certificate {device_certificate, client_id?, status?}",
        true,
    ),
    ("get", "/device-certificates/{id}", "One device certificate", true),
    (
        "delete",
        "/device-certificates/{id}",
        "Delete a device certificate record (a revocation stays)",
        true,
    ),
    (
        "get",
        "/device-certificates/{id}/pem",
        "Download a device certificate (PEM)",
        true,
    ),
    (
        "post",
        "/device-certificates/{id}/activate",
        "Activate a device certificate",
        true,
    ),
    (
        "post",
        "/device-certificates/{id}/deactivate",
        "Deactivate a device certificate (its live connections are closed)",
        true,
    ),
    (
        "post",
        "/device-certificates/{id}/revoke",
        "Revoke a device certificate for good (its live connections are closed)",
        true,
    ),
    (
        "get",
        "/connection-rejections",
        "Recent refusals (the newest of every reason), counts by reason, top sources",
        true,
    ),
    (
        "get",
        "/connections",
        "Live MQTT connections with their certificate id",
        true,
    ),
    (
        "delete",
        "/connections/{client_id}",
        "Close a live connection (MQTT 5 DISCONNECT 0x98)",
        true,
    ),
    (
        "get",
        "/audit-log",
        "The newest audit records (?limit=N, at most 1000)",
        true,
    ),
    ("get", "/metrics", "Prometheus text format 0.0.4", true),
];

pub async fn document() -> Json<serde_json::Value> {
    Json(build())
}

pub fn build() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    let error = serde_json::json!({
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    for (method, path, summary, auth) in ROUTES {
        let params: Vec<serde_json::Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = serde_json::json!({
            "summary": summary,
            "parameters": params,
            "responses": {"2XX": {"description": "Success"}, "default": error.clone()},
        });
        if !auth {
            op["security"] = serde_json::json!([]);
        }
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| serde_json::json!({}));
        entry[*method] = op;
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {"title": "certmq admin API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}
            }}
        }
    })
}
