//! The API contract, written once: [`OPERATIONS`] builds the router
//! (`crate::router` takes every handler from it), the OpenAPI 3.1 document
//! ([`build`], with request and response schemas and operation ids) and the
//! CLI's calls (`certmq` looks an operation up by id, takes its method and
//! path from here and percent-encodes the path parameters: [`path_for`]).

use axum::Json;
use serde_json::{json, Value};

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn lower(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Patch => "patch",
            Method::Delete => "delete",
        }
    }
}

/// What a successful call answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// JSON of the named component schema.
    Json(&'static str),
    /// `text/plain` (PEM, metrics).
    Text(&'static str),
    /// 204, no body.
    Empty,
}

/// One operation of the API (paths under `/api/v1`).
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// The operationId, and the name the CLI calls it by.
    pub id: &'static str,
    pub method: Method,
    pub path: &'static str,
    pub summary: &'static str,
    /// Needs the bearer token.
    pub auth: bool,
    /// The JSON body's component schema, if it takes one.
    pub request: Option<&'static str>,
    pub answer: Answer,
    /// Query parameters: (name, JSON type).
    pub query: &'static [(&'static str, &'static str)],
    /// Media types of a raw (non-JSON) body, if it takes one.
    pub raw_body: &'static [&'static str],
}

const fn op(
    id: &'static str,
    method: Method,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    answer: Answer,
) -> Operation {
    Operation {
        id,
        method,
        path,
        summary,
        auth: true,
        request,
        answer,
        query: &[],
        raw_body: &[],
    }
}

use Answer::{Empty, Json as J, Text};
use Method::{Delete, Get, Patch, Post, Put};

const LIMIT: &[(&str, &str)] = &[("limit", "integer")];

/// Every operation the API serves.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        auth: false,
        ..op("health", Get, "/health", "Liveness", None, J("Health"))
    },
    op(
        "openapi",
        Get,
        "/openapi.json",
        "This document",
        None,
        J("Any"),
    ),
    op(
        "list_server_certificates",
        Get,
        "/server-certificates",
        "List server certificates, the default one included",
        None,
        J("ServerCertificateList"),
    ),
    op(
        "bind_server_certificate",
        Post,
        "/server-certificates",
        "Bind a server certificate (chain PEM, leaf first, and its private key)",
        Some("BindServerCertificate"),
        J("ServerCertificate"),
    ),
    op(
        "get_server_certificate",
        Get,
        "/server-certificates/{id}",
        "One server certificate",
        None,
        J("ServerCertificate"),
    ),
    op(
        "unbind_server_certificate",
        Delete,
        "/server-certificates/{id}",
        "Unbind a server certificate",
        None,
        Empty,
    ),
    op(
        "enable_default_server_certificate",
        Post,
        "/server-certificates/default/enable",
        "Enable the default server certificate",
        None,
        J("ServerCertificate"),
    ),
    op(
        "disable_default_server_certificate",
        Post,
        "/server-certificates/default/disable",
        "Disable the default server certificate (needs a custom one bound)",
        None,
        J("ServerCertificate"),
    ),
    op(
        "new_registration_code",
        Post,
        "/ca-certificates/registration-code",
        "Issue a registration code (replaces the previous one)",
        None,
        J("RegistrationCode"),
    ),
    op(
        "list_ca_certificates",
        Get,
        "/ca-certificates",
        "List CA certificates",
        None,
        J("CaCertificateList"),
    ),
    op(
        "register_ca_certificate",
        Post,
        "/ca-certificates",
        "Register a CA with its verification certificate (proof of possession)",
        Some("RegisterCaCertificate"),
        J("CaCertificate"),
    ),
    op(
        "get_ca_certificate",
        Get,
        "/ca-certificates/{id}",
        "One CA certificate, with device-certificate counts by status",
        None,
        J("CaCertificate"),
    ),
    op(
        "update_ca_certificate",
        Patch,
        "/ca-certificates/{id}",
        "Change device provisioning",
        Some("UpdateCaCertificate"),
        J("CaCertificate"),
    ),
    op(
        "delete_ca_certificate",
        Delete,
        "/ca-certificates/{id}",
        "Delete an INACTIVE CA with no ACTIVE device certificates",
        None,
        Empty,
    ),
    op(
        "activate_ca_certificate",
        Post,
        "/ca-certificates/{id}/activate",
        "Activate a CA",
        None,
        J("CaCertificate"),
    ),
    op(
        "deactivate_ca_certificate",
        Post,
        "/ca-certificates/{id}/deactivate",
        "Deactivate a CA (its devices' live connections are closed)",
        None,
        J("CaCertificate"),
    ),
    op(
        "get_ca_crl",
        Get,
        "/ca-certificates/{id}/crl",
        "The CA's CRL: issuer, this and next update, how many it revokes",
        None,
        J("Crl"),
    ),
    Operation {
        raw_body: &["application/x-pem-file", "application/pkix-crl"],
        ..op(
            "put_ca_crl",
            Put,
            "/ca-certificates/{id}/crl",
            "Upload the CA's CRL (the body is the CRL, PEM or DER, signed by the CA); live connections of the certificates it lists close",
            None,
            J("Crl"),
        )
    },
    op(
        "list_alarms",
        Get,
        "/alarms",
        "Active alarms: certificates expiring, stale CRLs, persistence errors, cluster links down",
        None,
        J("AlarmList"),
    ),
    Operation {
        query: &[
            ("ca_id", "string"),
            ("client_id", "string"),
            ("common_name", "string"),
            ("ou", "string"),
            ("serial_number", "string"),
            ("status", "string"),
            ("expires_before", "integer"),
            ("expires_after", "integer"),
            ("limit", "integer"),
            ("offset", "integer"),
        ],
        ..op(
            "list_device_certificates",
            Get,
            "/device-certificates",
            "List device certificates, filtered and paged (expiry bounds in unix seconds)",
            None,
            J("DeviceCertificatePage"),
        )
    },
    op(
        "register_device_certificate",
        Post,
        "/device-certificates",
        "Register a device certificate (it must chain to a registered CA)",
        Some("RegisterDeviceCertificate"),
        J("DeviceCertificate"),
    ),
    op(
        "get_device_certificate",
        Get,
        "/device-certificates/{id}",
        "One device certificate",
        None,
        J("DeviceCertificate"),
    ),
    op(
        "delete_device_certificate",
        Delete,
        "/device-certificates/{id}",
        "Delete a device certificate record (a revocation stays)",
        None,
        Empty,
    ),
    op(
        "download_device_certificate",
        Get,
        "/device-certificates/{id}/pem",
        "Download a device certificate (PEM)",
        None,
        Text("application/x-pem-file"),
    ),
    op(
        "activate_device_certificate",
        Post,
        "/device-certificates/{id}/activate",
        "Activate a device certificate",
        None,
        J("DeviceCertificate"),
    ),
    op(
        "deactivate_device_certificate",
        Post,
        "/device-certificates/{id}/deactivate",
        "Deactivate a device certificate (its live connections are closed)",
        None,
        J("DeviceCertificate"),
    ),
    op(
        "revoke_device_certificate",
        Post,
        "/device-certificates/{id}/revoke",
        "Revoke a device certificate for good (its live connections are closed)",
        None,
        J("DeviceCertificate"),
    ),
    Operation {
        query: LIMIT,
        ..op(
            "list_connection_rejections",
            Get,
            "/connection-rejections",
            "Recent refusals (the newest of every reason), counts by reason, top sources",
            None,
            J("Rejections"),
        )
    },
    Operation {
        query: &[("node", "string")],
        ..op(
            "list_connections",
            Get,
            "/connections",
            "Live MQTT connections of every node (or of `node` only), with their certificate id",
            None,
            J("ConnectionList"),
        )
    },
    op(
        "list_cluster_nodes",
        Get,
        "/cluster/nodes",
        "The nodes of the cluster: id, addresses, health, connections",
        None,
        J("NodeList"),
    ),
    op(
        "kick_connection",
        Delete,
        "/connections/{client_id}",
        "Close a live connection on any node (MQTT 5 DISCONNECT 0x98)",
        None,
        Empty,
    ),
    Operation {
        query: LIMIT,
        ..op(
            "audit_log",
            Get,
            "/audit-log",
            "The newest audit records (at most 1000)",
            None,
            J("AuditLog"),
        )
    },
    op(
        "list_users",
        Get,
        "/users",
        "MQTT users (never their password hashes)",
        None,
        J("UserList"),
    ),
    op(
        "add_user",
        Post,
        "/users",
        "Add an MQTT user (password hashed with argon2id)",
        Some("NewUser"),
        J("User"),
    ),
    op(
        "delete_user",
        Delete,
        "/users/{username}",
        "Delete an MQTT user (its live connections are closed)",
        None,
        Empty,
    ),
    op(
        "set_user_password",
        Put,
        "/users/{username}/password",
        "Set an MQTT user's password",
        Some("NewPassword"),
        J("User"),
    ),
    op(
        "list_policies",
        Get,
        "/policies",
        "Authorization policies, in evaluation order",
        None,
        J("PolicyList"),
    ),
    op(
        "add_policy",
        Post,
        "/policies",
        "Add an authorization policy (applies to live connections at once)",
        Some("PolicyInput"),
        J("Policy"),
    ),
    op(
        "evaluate_policies",
        Post,
        "/policies/evaluate",
        "Dry run: which policy decides an action of a client",
        Some("EvaluatePolicies"),
        J("PolicyEvaluation"),
    ),
    op(
        "get_policy",
        Get,
        "/policies/{id}",
        "One authorization policy",
        None,
        J("Policy"),
    ),
    op(
        "replace_policy",
        Put,
        "/policies/{id}",
        "Replace an authorization policy",
        Some("PolicyInput"),
        J("Policy"),
    ),
    op(
        "delete_policy",
        Delete,
        "/policies/{id}",
        "Delete an authorization policy",
        None,
        Empty,
    ),
    op(
        "list_console_users",
        Get,
        "/console-users",
        "Web-console users and their roles",
        None,
        J("ConsoleUserList"),
    ),
    op(
        "put_console_user",
        Post,
        "/console-users",
        "Add a console user, or set its password and role (its sessions end)",
        Some("NewConsoleUser"),
        J("ConsoleUser"),
    ),
    op(
        "delete_console_user",
        Delete,
        "/console-users/{username}",
        "Delete a console user (its sessions end)",
        None,
        Empty,
    ),
    op(
        "overview",
        Get,
        "/overview",
        "The console's Overview: listeners, counts, message rates of the last 10 minutes, certificates expiring within 30 days",
        None,
        J("Overview"),
    ),
    op(
        "metrics",
        Get,
        "/metrics",
        "Prometheus text format 0.0.4",
        None,
        Text("text/plain"),
    ),
];

/// The operation named `id`.
pub fn operation(id: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.id == id)
}

/// Characters a path segment keeps as they are (RFC 3986 unreserved).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes one path segment or query value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path of `op` with its `{name}` parameters filled in (percent-encoded)
/// from `params`; None when one is missing.
pub fn path_for(op: &Operation, params: &[(&str, &str)]) -> Option<String> {
    let mut out = String::new();
    for (i, seg) in op.path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let (_, v) = params.iter().find(|(k, _)| *k == name)?;
                out.push_str(&encode_component(v));
            }
            None => out.push_str(seg),
        }
    }
    Some(out)
}

pub async fn document() -> Json<Value> {
    Json(build())
}

/// The OpenAPI 3.1 document of [`OPERATIONS`].
pub fn build() -> Value {
    let mut paths = serde_json::Map::new();
    let error = json!({
        "description": "Error (the status says which kind)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    for o in OPERATIONS {
        let mut params: Vec<Value> = o
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(
            o.query
                .iter()
                .map(|(name, ty)| json!({"name": name, "in": "query", "required": false, "schema": {"type": ty}})),
        );
        let (status, ok) = match o.answer {
            Answer::Json(schema) => (
                "200",
                json!({"description": "Success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
            ),
            Answer::Text(media) => (
                "200",
                json!({"description": "Success", "content": {media: {"schema": {"type": "string"}}}}),
            ),
            Answer::Empty => ("204", json!({"description": "Done"})),
        };
        let mut responses = serde_json::Map::new();
        responses.insert(status.into(), ok);
        if matches!(o.method, Method::Post) && matches!(o.answer, Answer::Json(_)) {
            // Creating routes answer 201 with the same body.
            if let Some(body) = responses.get("200").cloned() {
                responses.insert("201".into(), body);
            }
        }
        responses.insert("default".into(), error.clone());
        let mut operation = json!({
            "operationId": o.id,
            "summary": o.summary,
            "parameters": params,
            "responses": responses,
        });
        if let Some(schema) = o.request {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
            });
        }
        if !o.raw_body.is_empty() {
            let content: serde_json::Map<String, Value> = o
                .raw_body
                .iter()
                .map(|m| {
                    (
                        m.to_string(),
                        json!({"schema": {"type": "string", "format": "binary"}}),
                    )
                })
                .collect();
            operation["requestBody"] = json!({"required": true, "content": content});
        }
        if !o.auth {
            operation["security"] = json!([]);
        }
        let entry = paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        entry[o.method.lower()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "certmq admin API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        }
    })
}

fn string() -> Value {
    json!({"type": "string"})
}

fn nullable(ty: &str) -> Value {
    json!({"type": [ty, "null"]})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn list_of(item: &str) -> Value {
    json!({"type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}
    }})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

/// A policy's fields (`stored`: with its times, as the API shows it).
fn policy_properties(stored: bool) -> Value {
    let strings = || json!({"type": ["array", "null"], "items": {"type": "string"}});
    let mut p = json!({
        "id": if stored { string() } else { nullable("string") },
        "priority": {"type": "integer"},
        "effect": {"type": "string", "enum": ["allow", "deny"]},
        "actions": {"type": "array", "items": {"type": "string", "enum": ["connect", "publish", "subscribe"]}},
        "topics": strings(), "client_ids": strings(), "usernames": strings(),
        "ca_ids": strings(), "source_cidrs": strings(),
        "qos": {"type": ["array", "null"], "items": {"type": "integer", "enum": [0, 1, 2]}},
        "retain": nullable("boolean"),
        "description": nullable("string"),
    });
    if stored {
        p["created_at"] = time();
        p["updated_at"] = time();
    }
    p
}

/// The component schemas: the JSON the API reads and writes.
fn schemas() -> Value {
    let mut all = certificate_schemas();
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), access_schemas()) {
        all.extend(more);
    }
    all
}

/// Users and policies.
fn access_schemas() -> Value {
    json!({
        "NewConsoleUser": object(&["username", "password", "role"], json!({
            "username": string(), "password": string(),
            "role": {"type": "string", "enum": ["administrator", "viewer"]},
        })),
        "ConsoleUser": object(&["username", "role", "created_at"], json!({
            "username": string(), "role": {"type": "string", "enum": ["administrator", "viewer"]},
            "created_at": time(),
        })),
        "ConsoleUserList": list_of("ConsoleUser"),
        "Overview": object(&["listeners", "connections", "sessions", "history", "expiring_within_30_days"], json!({
            "listeners": {"type": "array", "items": object(&["protocol", "address"], json!({"protocol": string(), "address": string()}))},
            "connections": {"type": "integer"}, "sessions": {"type": "integer"},
            "messages_received_total": {"type": "integer"}, "messages_delivered_total": {"type": "integer"},
            "refusals_total": {"type": "integer"},
            "history": {"type": "array", "items": object(&["at", "received_per_s", "delivered_per_s"], json!({
                "at": {"type": "integer"}, "received_per_s": {"type": "number"}, "delivered_per_s": {"type": "number"}
            }))},
            "expiring_within_30_days": {"type": "array", "items": object(&["kind", "id", "not_after"], json!({
                "kind": {"type": "string", "enum": ["server", "ca", "device"]}, "id": string(),
                "name": nullable("string"), "not_after": time()
            }))},
            "expiring_devices": {"type": "integer"},
        })),
        "NewUser": object(&["username", "password"], json!({"username": string(), "password": string()})),
        "NewPassword": object(&["password"], json!({"password": string()})),
        "User": object(&["username", "created_at", "updated_at"], json!({
            "username": string(), "created_at": time(), "updated_at": time()
        })),
        "UserList": list_of("User"),
        "PolicyInput": object(&["priority", "effect", "actions"], policy_properties(false)),
        "Policy": object(&["id", "priority", "effect", "actions", "created_at", "updated_at"], policy_properties(true)),
        "PolicyList": list_of("Policy"),
        "EvaluatePolicies": object(&["client_id", "action"], json!({
            "client_id": string(), "username": nullable("string"),
            "certificate_id": nullable("string"),
            "cert": {"type": ["object", "null"], "properties": {
                "cn": nullable("string"), "ou": nullable("string"), "serial": nullable("string"),
                "fingerprint": nullable("string"), "san_dns": {"type": "array", "items": string()},
                "ca_id": nullable("string"),
            }},
            "source_ip": nullable("string"),
            "action": {"type": "string", "enum": ["connect", "publish", "subscribe"]},
            "topic": nullable("string"),
            "qos": {"type": "integer", "enum": [0, 1, 2]},
            "retain": {"type": "boolean"},
        })),
        "PolicyEvaluation": object(&["decision", "decided_by", "policy_id", "priority"], json!({
            "decision": {"type": "string", "enum": ["allow", "deny"]},
            "subscription": {"type": "string", "enum": ["allow", "checked", "deny"]},
            "decided_by": {"type": "string", "enum": ["policy", "no_match"]},
            "policy_id": nullable("string"),
            "priority": nullable("integer"),
        })),
    })
}

fn certificate_schemas() -> Value {
    json!({
        "Any": {},
        "Error": object(&["error"], json!({"error": object(&["code", "message"], json!({"code": string(), "message": string()}))})),
        "Health": object(&["status"], json!({
            "status": string(),
            "cluster": object(&["node"], json!({
                "node": string(),
                "registry": {"type": "string", "enum": ["up", "down"]},
                "nats": {"type": "string", "enum": ["up", "down"]},
            })),
        })),
        "BindServerCertificate": object(&["certificate_chain", "private_key"], json!({
            "name": nullable("string"), "certificate_chain": string(), "private_key": string()
        })),
        "ServerCertificate": object(&["id", "is_default", "enabled", "serial_number", "not_before", "not_after"], json!({
            "id": string(), "name": nullable("string"), "is_default": {"type": "boolean"},
            "enabled": {"type": "boolean"}, "subject_cn": nullable("string"),
            "issuer_cn": nullable("string"), "serial_number": string(),
            "dns_names": {"type": "array", "items": string()},
            "ip_addresses": {"type": "array", "items": string()},
            "not_before": time(), "not_after": time(),
            "seconds_to_expiry": {"type": "integer"}, "chain_length": {"type": "integer"},
            "created_at": nullable("string"),
            "warnings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}},
        })),
        "ServerCertificateList": list_of("ServerCertificate"),
        "RegistrationCode": object(&["registration_code", "expires_at"], json!({
            "registration_code": string(), "expires_at": time()
        })),
        "RegisterCaCertificate": object(&["ca_certificate", "verification_certificate"], json!({
            "ca_certificate": string(), "verification_certificate": string(),
            "status": {"type": ["string", "null"], "enum": ["ACTIVE", "INACTIVE", null]},
            "device_provisioning": {"type": ["string", "null"], "enum": ["API", "JITP", null]},
            "automatic_activation": nullable("boolean"),
        })),
        "UpdateCaCertificate": object(&[], json!({
            "device_provisioning": {"type": ["string", "null"], "enum": ["API", "JITP", null]},
            "automatic_activation": nullable("boolean"),
            "crl_url": nullable("string"),
        })),
        "Finding": object(&["code", "message"], json!({"code": string(), "message": string()})),
        "Crl": object(&["ca_id", "this_update", "stale", "revoked_count", "source", "updated_at"], json!({
            "ca_id": string(), "issuer_cn": nullable("string"), "this_update": time(),
            "next_update": nullable("string"), "stale": {"type": "boolean"},
            "revoked_count": {"type": "integer"}, "crl_number": nullable("string"),
            "source": string(), "updated_at": time(),
        })),
        "Alarm": object(&["id", "kind", "severity", "subject", "message", "raised_at"], json!({
            "id": string(), "kind": string(),
            "severity": {"type": "string", "enum": ["critical", "major", "warning"]},
            "subject": string(), "message": string(), "raised_at": time(), "details": {},
        })),
        "AlarmList": list_of("Alarm"),
        "CaCertificate": object(&["id", "serial_number", "status", "device_provisioning"], json!({
            "id": string(), "serial_number": string(), "subject_cn": nullable("string"),
            "issuer_cn": nullable("string"), "not_before": time(), "not_after": time(),
            "seconds_to_expiry": {"type": "integer"},
            "status": {"type": "string", "enum": ["ACTIVE", "INACTIVE"]},
            "device_provisioning": {"type": "string", "enum": ["API", "JITP"]},
            "automatic_activation": {"type": "boolean"}, "registered_at": time(),
            "last_activated_at": nullable("string"), "last_deactivated_at": nullable("string"),
            "verification_certificate": string(),
            "crl_url": nullable("string"),
            "device_certificate_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "warnings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}},
        })),
        "CaCertificateList": list_of("CaCertificate"),
        "RegisterDeviceCertificate": object(&["device_certificate"], json!({
            "device_certificate": {"type": "string", "description": "PEM: the device certificate, then the intermediates to its CA, if any"},
            "client_id": nullable("string"),
            "status": {"type": ["string", "null"], "enum": ["ACTIVE", "INACTIVE", "PENDING_ACTIVATION", null]},
        })),
        "DeviceCertificate": object(&["id", "ca_id", "serial_number", "status", "source"], json!({
            "id": string(), "ca_id": string(), "serial_number": string(),
            "subject_cn": nullable("string"), "subject_ou": nullable("string"),
            "client_id": nullable("string"), "not_before": time(), "not_after": time(),
            "status": {"type": "string", "enum": ["ACTIVE", "INACTIVE", "REVOKED", "PENDING_ACTIVATION"]},
            "source": {"type": "string", "enum": ["API", "JITP"]},
            "created_at": time(), "updated_at": time(), "last_connected_at": nullable("string"),
            "intermediates": {"type": "array", "items": object(&["serial_number", "not_after"], json!({
                "subject_cn": nullable("string"), "serial_number": string(), "not_after": time(),
            }))},
            "warnings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}},
        })),
        "DeviceCertificatePage": object(&["items", "total", "limit", "offset"], json!({
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/DeviceCertificate"}},
            "total": {"type": "integer"}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
        })),
        "Connection": object(&["node", "client_id", "listener", "peer_address", "connected_at"], json!({
            "node": string(), "client_id": string(), "listener": string(), "peer_address": string(),
            "certificate_id": nullable("string"), "connected_at": time(),
            "username": nullable("string"),
        })),
        "ConnectionList": list_of("Connection"),
        "Node": object(&["id", "this", "health", "addresses", "connections", "started_at", "last_seen"], json!({
            "id": string(), "this": {"type": "boolean"},
            "health": {"type": "string", "enum": ["up", "down"]},
            "addresses": {"type": "array", "items": object(&["protocol", "address"], json!({
                "protocol": string(), "address": string()
            }))},
            "connections": {"type": "integer"}, "started_at": time(), "last_seen": time(),
        })),
        "NodeList": list_of("Node"),
        "Rejection": object(&["at", "reason", "listener", "peer_address"], json!({
            "at": time(), "reason": string(), "listener": string(), "peer_address": string(),
            "client_id": nullable("string"), "certificate_id": nullable("string"),
            "ca_id": nullable("string"), "username": nullable("string"),
        })),
        "Rejections": object(&["items", "counts_by_reason", "top_sources"], json!({
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Rejection"}},
            "counts_by_reason": {"type": "object", "additionalProperties": {"type": "integer"}},
            "top_sources": {"type": "array", "items": object(&["reason", "source", "count"], json!({
                "reason": string(), "source": string(), "count": {"type": "integer"}
            }))},
        })),
        "AuditRecord": object(&["seq", "at", "actor", "action", "target"], json!({
            "seq": {"type": "integer"}, "at": time(), "actor": string(), "action": string(),
            "target": string(), "before": {}, "after": {},
        })),
        "AuditLog": list_of("AuditRecord"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_paths_encode() {
        let mut ids: Vec<&str> = OPERATIONS.iter().map(|o| o.id).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
        let kick =
            operation("kick_connection").map(|o| path_for(o, &[("client_id", "site/a b?c#1")]));
        assert_eq!(
            kick,
            Some(Some("/connections/site%2Fa%20b%3Fc%231".to_string()))
        );
    }

    #[test]
    fn every_referenced_schema_exists() {
        let doc = build();
        let text = doc.to_string();
        let schemas = &doc["components"]["schemas"];
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                schemas.get(name).is_some(),
                "{name} is referenced but not defined"
            );
        }
    }
}
