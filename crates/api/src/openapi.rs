//! The OpenAPI description, generated from the handlers and wire types. The committed copy
//! (`docs/openapi.json`) is checked against this by a test, so it never drifts.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use apitrail_model::action::MAX_NAMES;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, KnownFormat, Object, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, PathItem, Ref, RefOr, Response, ResponseBuilder, Schema};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::error::{self, NativeErrorBody};

/// The API description without its paths, which [`document`] takes from the router
/// (`crate::routes`) and then completes with the modifiers below.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "apitrail",
        description = "Self-hosted, multi-tenant API activity log service: request logs, audit log entries and action records, served through the dialects of five public APIs and apitrail's native API."
    ),
    components(schemas(error::NativeErrorBody, error::NativeErrorDetail, error::NativeErrorItem)),
    tags(
        (name = "logs", description = "The logs dialect: GET /v1/logs."),
        (name = "keys", description = "The keys dialect: GET /v1/api-keys/requests."),
        (name = "zoo", description = "The zoo dialect: GET /org/api-calls and its siblings."),
        (name = "audit", description = "The audit dialect: GET /audit-log and GET /v1/audit-log, and the hash-chain check."),
        (name = "actions", description = "The actions dialect (GET /v1/orgs/{org_id}/actions/records) and the native routes of credentials, destinations, action definitions, triggers and signals."),
        (name = "ingest", description = "Writing records into apitrail."),
        (name = "timeline", description = "One request's records of every kind: GET /v1/requests/{request_id}/timeline."),
        (name = "export", description = "Streamed exports of request logs and audit entries, without caps."),
        (name = "stats", description = "Request-log statistics: counts, error counts and latency percentiles per time bucket."),
        (name = "api-keys", description = "An org admin's own API keys."),
        (name = "viewer-tokens", description = "Read-only, short-lived credentials (atv_...) that read only the list routes of their record kinds, with a filter forced on every query."),
        (name = "me", description = "The caller's own org and credential: GET /v1/me."),
        (name = "operator", description = "Org and key management with the operator token."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    )
)]
#[derive(Debug)]
pub(crate) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An org API key, or a viewer token (atv_...).",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An org API key (or a viewer token) as a bearer token.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "arklow",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-arklow-auth",
                "An org API key, or a viewer token (atv_...).",
            ))),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "better-auth.session_token",
                "An org API key in the session cookie (recorded as auth_type session), or a viewer token.",
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

/// Every query parameter is read by `params::Params`, which treats an empty value (`?limit=`)
/// as absent: the document says so with `allowEmptyValue` on each of them.
struct EmptyQueryValues;

impl Modify for EmptyQueryValues {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.parameter_in == ParameterIn::Query {
                        parameter
                            .extensions
                            .get_or_insert_with(Extensions::default)
                            .insert("allowEmptyValue".into(), true.into());
                    }
                }
            }
        }
    }
}

/// Every route behind a credential refuses a request carrying two different ones
/// (`auth`) with a 400 in its own envelope: where the operation documents no
/// other 400, its 401's body (the same envelope) is documented for it; where it does, the
/// description says so.
struct AmbiguousCredentials;

impl Modify for AmbiguousCredentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        const WHY: &str = "Two different credentials on one request (`ambiguous_credentials`)";
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                if operation.security.is_none() {
                    continue;
                }
                let responses = &mut operation.responses.responses;
                if let Some(RefOr::T(bad)) = responses.get_mut("400") {
                    bad.description = format!("{}; or: {WHY}", bad.description);
                } else if let Some(RefOr::T(unauthorized)) = responses.get("401") {
                    let mut bad = unauthorized.clone();
                    bad.description = WHY.to_owned();
                    responses.insert("400".into(), RefOr::T(bad));
                }
            }
        }
    }
}

/// The limits of the request head (`head`), checked before any route: a request target
/// over 8 KiB is a 414, over 100 headers or 32 KiB of them a 431, both in the native envelope,
/// on every operation.
struct HeadLimits;

impl Modify for HeadLimits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let limits = errors::<NativeErrorBody>(&[
            ("414", "The request target is longer than 8 KiB"),
            (
                "431",
                "More than 100 request headers, or more than 32 KiB of them",
            ),
        ]);
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                operation.responses.responses.extend(limits.clone());
            }
        }
    }
}

/// Error responses in error body `B` (a reference to its schema, as `body = B` writes one),
/// by status.
pub(crate) fn errors<B: ToSchema>(responses: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    responses
        .iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(B::name())))
                        .build(),
                )
                .build();
            ((*status).to_owned(), RefOr::T(response))
        })
        .collect()
}

/// What every route behind an org key answers besides its own responses, in its error body
/// `B`: 401 (no live key), 503 (the store is unavailable) and, for a route that needs one
/// [`scope`] (`SCOPE`), the 403 of a key without it.
#[derive(Debug)]
pub(crate) struct OrgKeyErrors<B, const SCOPE: u8 = { scope::OWN_403 }>(PhantomData<B>);

/// The scope a route behind an org key requires, as [`OrgKeyErrors`] documents its 403.
pub(crate) mod scope {
    /// The route documents its own 403 (several scopes, or another wording).
    pub(crate) const OWN_403: u8 = 0;
    /// `read`.
    pub(crate) const READ: u8 = 1;
    /// `write`.
    pub(crate) const WRITE: u8 = 2;
    /// `admin`.
    pub(crate) const ADMIN: u8 = 3;
}

impl<B: ToSchema, const SCOPE: u8> IntoResponses for OrgKeyErrors<B, SCOPE> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let forbidden = match SCOPE {
            scope::READ => {
                "The key lacks the read scope, the operator token was sent, or a viewer token \
                 that does not read this kind"
            }
            scope::WRITE => {
                "The key lacks the write scope, or the operator token or a viewer token was sent"
            }
            scope::ADMIN => {
                "The key lacks the admin scope, or the operator token or a viewer token was sent"
            }
            _ => "",
        };
        let unauthorized = ("401", "Missing, unknown or revoked API key");
        let unavailable = ("503", STORE_UNAVAILABLE);
        if forbidden.is_empty() {
            errors::<B>(&[unauthorized, unavailable])
        } else {
            errors::<B>(&[unauthorized, ("403", forbidden), unavailable])
        }
    }
}

/// What every operator route answers besides its own responses: 401 (no or a wrong operator
/// token), 403 (the operator API is disabled) and 503.
#[derive(Debug)]
pub(crate) struct OperatorErrors;

impl IntoResponses for OperatorErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors::<NativeErrorBody>(&[
            ("401", "Missing or wrong operator token"),
            (
                "403",
                "The operator API is disabled (no operator token configured)",
            ),
            ("503", STORE_UNAVAILABLE),
        ])
    }
}

/// What every route reading a JSON body (`wire::BodyBytes`, `common::json_body`) answers
/// about it: 400 (malformed, or a field is invalid) and 413.
#[derive(Debug)]
pub(crate) struct JsonBodyErrors;

impl IntoResponses for JsonBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors::<NativeErrorBody>(&[
            (
                "400",
                "The body is malformed or a field is invalid (each is named)",
            ),
            ("413", "The body exceeds 2 MiB"),
        ])
    }
}

const STORE_UNAVAILABLE: &str = "The store is unavailable; retry after Retry-After seconds";

/// The headers the tracking middleware (`selflog::track`) and the error renderer
/// (`error::render`) set, on every response they set them on.
struct ResponseHeaders;

impl Modify for ResponseHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let header = |schema: Object, description: &str| {
            HeaderBuilder::new()
                .schema(schema)
                .description(Some(description))
                .build()
        };
        let request_id = header(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9_.-]{1,128}$"))
                .build(),
            "The request's id: the caller's valid X-Request-Id, else a new `req_` id. Error bodies repeat it.",
        );
        let call_id = header(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::Custom("uuid".into())))
                .build(),
            "On calls authenticated with an org key: the call's id, which names its own request log when self-logging is on.",
        );
        let retry_after = header(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .build(),
            "Seconds to wait before retrying.",
        );
        let authenticate = header(
            ObjectBuilder::new().schema_type(Type::String).build(),
            "`Bearer realm=\"apitrail\"`.",
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in operations_mut(item) {
                let org_key = operation.security.iter().flatten().any(|requirement| {
                    serde_json::to_value(requirement).is_ok_and(|v| v.get("operator").is_none())
                });
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let headers = &mut response.headers;
                    headers.insert("X-Request-Id".into(), request_id.clone());
                    if org_key {
                        headers.insert("X-Api-Call-Id".into(), call_id.clone());
                    }
                    match status.as_str() {
                        "401" => {
                            headers.insert("WWW-Authenticate".into(), authenticate.clone());
                        }
                        // Every 503 but readiness's tells when to retry.
                        "503" if operation.security.is_some() => {
                            headers.insert("Retry-After".into(), retry_after.clone());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn operations_mut(
    item: &mut PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// `schema` with a description: `schema_with` fields and parameters lose their doc comment.
fn described<S: Into<Schema>>(schema: S, description: &str) -> Schema {
    let mut schema = schema.into();
    match &mut schema {
        Schema::Object(o) => o.description = Some(description.into()),
        Schema::Array(a) => a.description = Some(description.into()),
        Schema::AnyOf(a) => a.description = Some(description.into()),
        _ => {}
    }
    schema
}

/// A string schema restricted to `values`, with its default.
fn string_enum(values: &[&str], default: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .default(Some(default.into()))
        .build()
}

/// `sort_by` of `GET /v1/logs`.
pub(crate) fn logs_sort_by() -> Schema {
    described(
        string_enum(&["created_at", "duration_ms", "status_code"], "created_at"),
        "The sort field; ties break by id.",
    )
}

/// `sort_dir` of `GET /v1/logs`.
pub(crate) fn sort_dir() -> Schema {
    described(string_enum(&["asc", "desc"], "desc"), "The sort direction.")
}

/// `format` of the exports.
pub(crate) fn export_format() -> Schema {
    described(
        string_enum(&["ndjson", "csv"], "ndjson"),
        "The export's format.",
    )
}

/// `interval` of the stats.
pub(crate) fn stats_interval() -> Schema {
    described(
        string_enum(&["1m", "5m", "15m", "1h", "1d"], "1h"),
        "The bucket width.",
    )
}

/// `group_by` of the stats (no default: one series of everything).
pub(crate) fn stats_group_by() -> Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([
            "route_pattern",
            "method",
            "status_code",
            "status_class",
            "api_key_id",
            "user_id",
            "origin",
        ]))
        .description(Some("What the series are grouped by."))
        .into()
}

/// `sort_by` of the zoo lists.
pub(crate) fn zoo_sort_by() -> Schema {
    described(
        string_enum(
            &["created_at_ascending", "created_at_descending"],
            "created_at_descending",
        ),
        "The order; ties break by id.",
    )
}

/// The zoo dialect's `method`.
pub(crate) fn zoo_method() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([
                "OPTIONS",
                "GET",
                "POST",
                "PUT",
                "DELETE",
                "HEAD",
                "TRACE",
                "CONNECT",
                "PATCH",
                "EXTENSION",
            ]))
            .build(),
        "The HTTP method: one of OPTIONS GET POST PUT DELETE HEAD TRACE CONNECT PATCH, else EXTENSION.",
    )
}

/// The only destination type.
pub(crate) fn webhook_type() -> Schema {
    described(
        string_enum(&["webhook"], "webhook"),
        "`webhook` (the only type).",
    )
}

/// A record's status.
pub(crate) fn action_status() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([
                "pending",
                "acknowledged",
                "succeeded",
                "failed",
                "timed_out",
            ]))
            .build(),
        "The record's status.",
    )
}

/// The actions dialect's only search operator.
pub(crate) fn search_op() -> Schema {
    described(string_enum(&["eq"], "eq"), "`eq` (the only operator).")
}

/// A string of at most `max` characters.
fn text(max: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(max))
        .build()
}

/// Labels of destinations and records: at most 50 pairs, keys of 1-100 characters, values
/// of at most 1000.
pub(crate) fn tags() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(RefOr::T(Schema::Object(text(1000)))))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(100)),
            ))
            .max_properties(Some(50))
            .build(),
        "Labels: at most 50 pairs; keys of 1-100 characters, values of at most 1000.",
    )
}

/// The extra headers of a destination: at most 50, names are HTTP tokens of 1-100 characters
/// (not one apitrail sets itself, in any case), values at most 1000 characters without
/// control characters other than tab.
pub(crate) fn webhook_headers() -> Schema {
    let reserved: Extensions = [(
        "not",
        serde_json::json!({ "enum": crate::wire::RESERVED_HEADERS }),
    )]
    .into_iter()
    .collect();
    let mut names = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"))
        .build();
    names.extensions = Some(reserved);
    let schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(1000))
                .pattern(Some("^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$")),
        ))
        .property_names(Some(names))
        .max_properties(Some(50))
        .build();
    described(
        schema,
        "Extra headers sent with every delivery: at most 50; names are HTTP tokens of 1-100 characters and not one apitrail sets itself (webhook-id, webhook-timestamp, webhook-signature, content-type, content-length, host, in any case); values of at most 1000 characters without control characters other than tab.",
    )
}

/// A label: 1-1000 characters, not only white space.
pub(crate) fn label() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(1000))
            .pattern(Some(NOT_ONLY_WHITE_SPACE))
            .build(),
        "Display label: 1-1000 characters, not only white space.",
    )
}

/// Holds a character that is not white space (Rust's `char::is_whitespace`, spelled out:
/// engines disagree on what `\s` means beyond ASCII).
const NOT_ONLY_WHITE_SPACE: &str = "[^\\u0009-\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// A webhook URL as `model::action::webhook_target` reads it: `http`/`https`, a host (an
/// IPv6 literal in brackets), an optional port 1-65535, no user info, no spaces or control
/// characters, at most 2048 characters. Whether a loopback or private address is allowed is
/// the server's setting and not part of the form.
pub(crate) fn webhook_url() -> Schema {
    // Neither controls (Cc) nor the space.
    let ch = "\\u0000-\\u0020\\u007f-\\u009f";
    let port = "\\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    let authority = format!(
        "\\[[^{ch}/?#@\\]]+\\](:({port})?|[^{ch}/?#@:][^{ch}/?#@]*)?\
         |[^{ch}/?#@\\[:][^{ch}/?#@:]*\
         |[^{ch}/?#@\\[][^{ch}/?#@]*:({port})?"
    );
    let schema = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(2048))
        .pattern(Some(format!(
            "^[Hh][Tt][Tt][Pp][Ss]?://({authority})([/?#][^{ch}]*)?$"
        )))
        .build();
    described(
        schema,
        "The `http(s)://` URL receiving the deliveries: a host (an IPv6 literal in brackets), an optional port 1-65535, no user info, no spaces or control characters, at most 2048 characters. A loopback or private address (or a name resolving to one) needs the server's `--allow-private-destinations`.",
    )
}

/// A variant or alias: 1-100 characters of `[A-Za-z0-9_.:-]`, not a UUID.
fn action_name_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9_.:-]{1,100}$"))
        .build()
}

/// A definition's `variant`.
pub(crate) fn action_name() -> Schema {
    described(
        action_name_schema(),
        "The name records are triggered by: 1-100 characters of `[A-Za-z0-9_.:-]`, not a UUID, unique among the names of the org's live definitions.",
    )
}

/// `schema` that also admits `null` (an absent value).
fn or_null<S: Into<Schema>>(schema: S) -> Schema {
    fn add_null(types: &mut SchemaType) {
        *types = match std::mem::replace(types, SchemaType::AnyValue) {
            SchemaType::Type(t) => SchemaType::Array(vec![t, Type::Null]),
            SchemaType::Array(mut ts) => {
                ts.push(Type::Null);
                SchemaType::Array(ts)
            }
            SchemaType::AnyValue => SchemaType::AnyValue,
        };
    }
    let mut schema = schema.into();
    match &mut schema {
        Schema::Object(o) => {
            add_null(&mut o.schema_type);
            if let Some(values) = o.enum_values.as_mut() {
                values.push(serde_json::Value::Null);
            }
        }
        Schema::Array(a) => add_null(&mut a.schema_type),
        _ => {}
    }
    schema
}

/// [`label`] or null.
pub(crate) fn label_or_null() -> Schema {
    or_null(label())
}

/// [`webhook_url`] or null.
pub(crate) fn webhook_url_or_null() -> Schema {
    or_null(webhook_url())
}

/// [`webhook_headers`] or null.
pub(crate) fn webhook_headers_or_null() -> Schema {
    or_null(webhook_headers())
}

/// [`webhook_type`] or null.
pub(crate) fn webhook_type_or_null() -> Schema {
    or_null(webhook_type())
}

/// [`tags`] or null.
pub(crate) fn tags_or_null() -> Schema {
    or_null(tags())
}

/// `signaling.default` as given: `ack` or null.
pub(crate) fn signaling_default() -> Schema {
    described(
        or_null(signaling_ack()),
        "What a 2xx means: `ack` (the only value).",
    )
}

/// `signaling.default` as printed: always `ack`.
pub(crate) fn signaling_ack() -> Schema {
    described(
        string_enum(&["ack"], "ack"),
        "Always `ack`: a 2xx only acknowledges a delivery.",
    )
}

/// A signal's outcome.
pub(crate) fn signal_status() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["succeeded", "failed"]))
            .build(),
        "The outcome.",
    )
}

/// A definition's aliases: at most 19 distinct names.
pub(crate) fn aliases() -> Schema {
    described(
        ArrayBuilder::new()
            .schema_type(SchemaType::Array(vec![Type::Array, Type::Null]))
            .items(action_name_schema())
            .max_items(Some(MAX_NAMES - 1))
            .unique_items(true)
            .build(),
        "Other names the definition is triggered by, by the variant's rules: at most 19, none repeated, none the variant itself.",
    )
}

/// A JSON Schema: an object or a boolean.
pub(crate) fn json_schema() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(SchemaType::Array(vec![Type::Object, Type::Boolean]))
            .build(),
        "The JSON Schema of a record's input (draft 2020-12 unless `$schema` says otherwise): an object or a boolean, at most 256 KiB.",
    )
}

/// An API key's scopes.
pub(crate) fn scopes() -> Schema {
    described(
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["read", "write", "admin"])),
            )
            .min_items(Some(1))
            .build(),
        "The key's scopes: a non-empty set of read, write, admin (each independent: admin does not imply read).",
    )
}

/// A viewer token's kinds.
pub(crate) fn viewer_kinds() -> Schema {
    described(
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["request_logs", "audit_log", "action_records"])),
            )
            .min_items(Some(1))
            .build(),
        "The record kinds a viewer token reads: a non-empty set of request_logs, audit_log, action_records.",
    )
}

/// What kind of principal an API key acts for.
pub(crate) fn principal_type() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["user", "service_account"]))
            .build(),
        "What kind of principal the key acts for.",
    )
}

/// A UUID as `uuid::Uuid::try_parse` reads it (hyphenated, simple, braced or URN).
const UUID_FORMS: &str = "[0-9A-Fa-f]{32}\
    |[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\
    |\\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\\}\
    |[Uu][Rr][Nn]:[Uu][Uu][Ii][Dd]:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}";

/// An ingested record's `id`: a UUID in any form `uuid` reads, or empty/null (minted).
pub(crate) fn record_id() -> Schema {
    described(
        ObjectBuilder::new()
            .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
            .pattern(Some(format!("^(|{UUID_FORMS})$")))
            .build(),
        "A UUID (hyphenated, simple, braced or URN); re-sending a stored id is a no-op, so retries are safe. Generated when absent, null or empty. Unique within a batch.",
    )
}

/// A string schema of one `format`.
fn formatted(format: KnownFormat) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(format)))
        .build()
}

/// Null, the empty string (both: absent), or a string of one of `formats`.
fn absent_or(formats: &[KnownFormat]) -> Schema {
    let mut any = AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(0)),
        );
    for format in formats {
        any = any.item(formatted(format.clone()));
    }
    Schema::AnyOf(any.build())
}

/// An ingested timestamp: RFC 3339 with an offset, or empty/null (absent).
pub(crate) fn ingest_date_time() -> Schema {
    described(
        absent_or(&[KnownFormat::DateTime]),
        "RFC 3339 with an offset, between 2000-01-01T00:00:00Z and 5 minutes after the server's clock; null or empty: absent (`created_at` then defaults to the time of ingest).",
    )
}

/// An ingested IP address: IPv4 or IPv6, or empty/null (absent).
pub(crate) fn ingest_ip() -> Schema {
    described(
        absent_or(&[KnownFormat::Ipv4, KnownFormat::Ipv6]),
        "An IPv4 or IPv6 address; null or empty: absent.",
    )
}

/// An ingested price: a decimal string or a number written as a plain decimal (no exponent,
/// at most 18 digits each side of the point), not negative, or null.
pub(crate) fn price() -> Schema {
    let any = AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,18}(\\.[0-9]{1,18})?$")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0))
                .exclusive_maximum(Some(1e18)),
        )
        .build();
    described(
        any,
        "A decimal that is not negative: a string such as \"16.74\", or a number written as a plain decimal (no exponent); at most 18 digits each side of the point; stored exactly as written.",
    )
}

/// Ingested `metadata`: string pairs, at most 64.
pub(crate) fn metadata() -> Schema {
    described(
        or_null(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(RefOr::T(Schema::Object(text(1024)))))
                .property_names(Some(text(256)))
                .max_properties(Some(64))
                .build(),
        ),
        "Free-form string pairs: at most 64 keys of at most 256 bytes, values of at most 1024 bytes.",
    )
}

/// A value that is always `null`.
pub(crate) fn null() -> Schema {
    described(
        ObjectBuilder::new().schema_type(Type::Null).build(),
        "Always null.",
    )
}

/// The document as pretty-printed JSON, built once.
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = crate::routes().into_openapi();
        let modifiers: [&dyn Modify; 5] = [
            &SecuritySchemes,
            &EmptyQueryValues,
            &AmbiguousCredentials,
            &HeadLimits,
            &ResponseHeaders,
        ];
        for modifier in modifiers {
            modifier.modify(&mut doc);
        }
        doc.to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
    .clone()
}
