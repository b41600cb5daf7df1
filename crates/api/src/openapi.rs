//! The OpenAPI description, generated from the handlers and wire types. The committed copy
//! (`docs/openapi.json`) is checked against this by a test, so it never drifts.

use std::sync::OnceLock;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{action_records, actions, admin, audit, ingest, keys, logs, ops, wire, zoo};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "apitrail",
        description = "Self-hosted, multi-tenant API activity log service: request logs, audit log entries and action records, served through the dialects of five public APIs and apitrail's native API."
    ),
    paths(
        logs::list_logs,
        keys::list_key_requests,
        zoo::org_list_api_calls,
        zoo::get_api_call_for_org,
        zoo::user_list_api_calls,
        zoo::get_api_call_for_user,
        zoo::list_api_calls_for_user,
        zoo::list_api_calls,
        zoo::get_api_call,
        audit::list_audit_log,
        audit::list_audit_log_unversioned,
        audit::verify_audit_log,
        action_records::list_action_records,
        actions::create_credential,
        actions::list_credentials,
        actions::create_destination,
        actions::list_destinations,
        actions::get_destination,
        actions::update_destination,
        actions::delete_destination,
        actions::create_definition,
        actions::list_definitions,
        actions::get_definition,
        actions::replace_definition,
        actions::delete_definition,
        actions::trigger_action,
        actions::signal_action,
        ingest::ingest_requests,
        ingest::ingest_audit_events,
        admin::create_org,
        admin::list_orgs,
        admin::get_org,
        admin::admin_create_key,
        admin::admin_list_keys,
        admin::admin_get_key,
        admin::admin_revoke_key,
        admin::create_key,
        admin::list_keys,
        admin::get_key,
        admin::revoke_key,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
    ),
    components(schemas(wire::NativeErrorBody, wire::NativeErrorDetail, wire::NativeErrorItem)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "logs", description = "The logs dialect: GET /v1/logs."),
        (name = "keys", description = "The keys dialect: GET /v1/api-keys/requests."),
        (name = "zoo", description = "The zoo dialect: GET /org/api-calls and its siblings."),
        (name = "audit", description = "The audit dialect: GET /audit-log and GET /v1/audit-log, and the hash-chain check."),
        (name = "actions", description = "The actions dialect (GET /v1/orgs/{org_id}/actions/records) and the native routes of credentials, destinations, action definitions, triggers and signals."),
        (name = "ingest", description = "Writing records into apitrail."),
        (name = "api-keys", description = "An org admin's own API keys."),
        (name = "operator", description = "Org and key management with the operator token."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An org API key.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An org API key as a bearer token."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "arklow",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-arklow-auth",
                "An org API key.",
            ))),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "better-auth.session_token",
                "An org API key in the session cookie (recorded as auth_type session).",
            ))),
        );
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator token (APITRAIL_ADMIN_TOKEN) as a bearer token.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as pretty-printed JSON, built once.
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
    .clone()
}
