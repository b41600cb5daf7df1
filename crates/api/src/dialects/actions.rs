//! The `actions` dialect: `GET /v1/orgs/{org_id}/actions/records`, exactly as seed 002
//! documents it: offset pages (`take` 1..50, default 20; `skip`), a total `count`, the
//! filters, `search[field|value|op]` (or the form-exploded `field`/`value`/`op`), and
//! `definition`/`state` only when their `include_*` flag is true. Newest first.

use std::collections::{BTreeMap, HashMap};

use apitrail_model::{
    ActionDefinition, ActionEvent, ActionFilter, ActionRecord, ActionSearch, ActionStatus,
    Destination, Scope, Tags, Tenant, Timestamp,
};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authed;
use crate::common::{OrgIdForm, path_org, raw_json};
use crate::error::{ApiError, Envelope, Failure};
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;
use crate::wire::{ConfigBody, Ids, StateBody};

/// The seed's default page size.
pub const DEFAULT_TAKE: u32 = 20;
/// The seed's maximum page size.
pub const MAX_TAKE: u32 = 50;
/// The deepest `skip` accepted: an offset costs time in proportion to it.
pub const MAX_SKIP: u64 = 1_000_000;

/// The actions dialect's error envelope: [`ActionsErrorBody`], `{"data": null, "errors":
/// [{"code", "message"}]}`.
#[derive(Debug)]
pub enum Actions {}

impl Envelope for Actions {
    type Body = ActionsErrorBody;

    fn body(err: &ApiError, _request_id: &str) -> ActionsErrorBody {
        let (_, code) = err.status_and_code();
        ActionsErrorBody {
            data: None,
            errors: vec![ActionsError {
                code: code.to_owned(),
                message: err.message.clone(),
            }],
        }
    }
}

/// The error body of the actions dialect.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionsErrorBody {
    /// Always null on errors.
    #[schema(schema_with = crate::openapi::null)]
    data: Option<()>,
    /// What went wrong.
    errors: Vec<ActionsError>,
}

/// One error of the actions dialect.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionsError {
    /// Machine-readable code.
    code: String,
    /// Human-readable sentence.
    message: String,
}

/// A destination inside a definition, as the seed prints it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DestinationItem {
    /// The destination's id.
    #[schema(format = "uuid")]
    id: String,
    /// The org.
    org_id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
    /// Label.
    label: String,
    /// `webhook`.
    #[serde(rename = "type")]
    #[schema(schema_with = crate::openapi::webhook_type)]
    kind: &'static str,
    /// Webhook settings.
    config: ConfigBody,
    /// RFC 3339; set once deleted.
    #[schema(required = true, format = DateTime)]
    deleted_at: Option<String>,
    /// Labels.
    #[schema(schema_with = crate::openapi::tags)]
    tags: Tags,
    /// The signing credential.
    #[schema(required = true, format = "uuid")]
    credential_id: Option<String>,
}

impl DestinationItem {
    fn new(org: &str, d: &Destination) -> Self {
        Self {
            id: d.id.to_string(),
            org_id: org.to_owned(),
            updated_at: d.updated_at.to_rfc3339(),
            label: d.label.clone(),
            kind: "webhook",
            config: (&d.config).into(),
            deleted_at: d.deleted_at.map(Timestamp::to_rfc3339),
            tags: d.tags.clone(),
            credential_id: d.credential_id.map(|c| c.to_string()),
        }
    }
}

/// One destination of a definition, with the destination.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DefinitionDestinationItem {
    /// The link's id.
    #[schema(format = "uuid")]
    id: String,
    /// The definition.
    #[schema(format = "uuid")]
    action_definition_id: String,
    /// The destination.
    #[schema(format = "uuid")]
    destination_id: String,
    /// The org.
    org_id: String,
    /// Whether records go there by default.
    is_default: bool,
    /// The destination (deleted ones too); null if it is gone.
    #[schema(required = true)]
    destination: Option<DestinationItem>,
}

/// The definition (at the record's version) as the seed prints it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DefinitionItem {
    /// The definition's id.
    #[schema(format = "uuid")]
    id: String,
    /// The org.
    org_id: String,
    /// The name records are triggered by.
    variant: String,
    /// The version.
    #[schema(minimum = 1)]
    version: u32,
    /// Other names.
    alias: Vec<String>,
    /// The input's JSON Schema (an object or a boolean).
    #[schema(value_type = Value)]
    schema: Box<RawValue>,
    /// RFC 3339; set once deleted.
    #[schema(required = true, format = DateTime)]
    deleted_at: Option<String>,
    /// Where records go.
    destinations: Vec<DefinitionDestinationItem>,
}

/// One event of a record.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventItem {
    /// The event's id.
    #[schema(format = "uuid")]
    id: String,
    /// The record.
    #[schema(format = "uuid")]
    action_record_id: String,
    /// The org.
    org_id: String,
    /// What happened, e.g. `created`, `attempted`, `signaled`.
    kind: String,
    /// The record's status after the event.
    #[schema(schema_with = crate::openapi::action_status)]
    status: &'static str,
    /// Delivery attempts started so far.
    attempt: u32,
    /// RFC 3339: when the next attempt is due.
    #[schema(required = true, format = DateTime)]
    available_at: Option<String>,
    /// RFC 3339: when an acknowledgement times out.
    #[schema(required = true, format = DateTime)]
    timeout_at: Option<String>,
    /// A detail.
    #[schema(required = true)]
    message: Option<String>,
    /// Any JSON a signal carried; null otherwise.
    #[schema(required = true, value_type = Value)]
    data: Option<Box<RawValue>>,
}

impl EventItem {
    fn new(org: &str, e: &ActionEvent) -> Self {
        Self {
            id: e.id.to_string(),
            action_record_id: e.record_id.to_string(),
            org_id: org.to_owned(),
            kind: e.kind.clone(),
            status: e.status.as_str(),
            attempt: e.attempt,
            available_at: e.available_at.map(Timestamp::to_rfc3339),
            timeout_at: e.timeout_at.map(Timestamp::to_rfc3339),
            message: e.message.clone(),
            data: e.data.as_deref().map(raw_json),
        }
    }
}

/// An action record: the seed's fields; `state` and `definition` only when asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordItem {
    /// The record's id.
    #[schema(format = "uuid")]
    id: String,
    /// The org.
    org_id: String,
    /// The definition.
    #[schema(format = "uuid")]
    action_definition_id: String,
    /// The input (any JSON).
    #[schema(value_type = Value)]
    input: Box<RawValue>,
    /// Seconds a signaling destination has to signal after acknowledging.
    #[schema(minimum = 1)]
    timeout: u32,
    /// Labels.
    #[schema(schema_with = crate::openapi::tags)]
    tags: Tags,
    /// The record's state (with `include_state=true` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    state: Option<StateBody>,
    /// The definition at the record's version (with `include_definition=true` only; null if
    /// it is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    definition: Option<DefinitionItem>,
    /// Every event, oldest first.
    events: Vec<EventItem>,
}

/// The page.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordsData {
    /// The records, newest first (empty with `count_only=true`).
    items: Vec<RecordItem>,
    /// How many records match in all (not the page size).
    count: u64,
}

/// The response: `{"data": {"items", "count"}, "errors": null}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordsResponse {
    /// The page.
    data: RecordsData,
    /// Always null on success.
    #[schema(schema_with = crate::openapi::null)]
    errors: Option<()>,
}

/// `search`: one field compared with a value (`search[field]`, `search[value]`,
/// `search[op]`); also accepted form-exploded as `field`, `value` and `op`, but not both
/// spellings at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RecordsSearch {
    /// `id`, `action_definition_id`, `variant`, `state.status`, `tags.<key>` or
    /// `input.<dotted.path>` (object keys: not empty, no `"`, not all digits; at most 32).
    #[schema(
        pattern = "^(id|action_definition_id|variant|state\\.status|tags\\.[\\s\\S]+|input\\.[^.\"]*[^.\"0-9][^.\"]*(\\.[^.\"]*[^.\"0-9][^.\"]*){0,31})$"
    )]
    field: String,
    /// The value (1-1000 characters; empty is absent); ids and statuses that are not valid
    /// match nothing.
    #[schema(min_length = 1, max_length = 1000)]
    value: String,
    /// `eq` (the only operator).
    #[schema(schema_with = crate::openapi::search_op)]
    op: Option<String>,
}

/// Query parameters (documentation only; parsing is in [`parse_query`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RecordsQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 50, default = 20)]
    take: Option<u32>,
    /// Records to skip (at most 1000000).
    #[param(minimum = 0, maximum = 1_000_000, default = 0)]
    skip: Option<u64>,
    /// A search on one field.
    #[param(style = DeepObject, explode, inline)]
    search: Option<RecordsSearch>,
    /// Only count: `items` is empty.
    #[param(default = false)]
    count_only: Option<bool>,
    /// Filter by definition id (a value that is not a UUID matches nothing).
    action_definition_id: Option<String>,
    /// Filter by variant.
    #[param(max_length = 100)]
    variant: Option<String>,
    /// Filter by definition version.
    #[param(minimum = 1, maximum = 4_294_967_295.0)]
    version: Option<u32>,
    /// Include each record's definition (at its version).
    #[param(default = false)]
    include_definition: Option<bool>,
    /// Include each record's state.
    #[param(default = false)]
    include_state: Option<bool>,
}

/// A parsed records query.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordsRequest {
    /// The filters.
    pub filter: ActionFilter,
    /// Records to skip.
    pub skip: u64,
    /// Page size.
    pub take: u32,
    /// `count_only`.
    pub count_only: bool,
    /// `include_definition`.
    pub include_definition: bool,
    /// `include_state`.
    pub include_state: bool,
}

/// The search value in either spelling (`search[x]` or `x`); both at once is an error.
fn either<'a>(p: &'a Params, name: &str) -> Result<Option<&'a str>, ApiError> {
    let bracketed = format!("search[{name}]");
    match (p.str(&bracketed)?, p.str(name)?) {
        (Some(_), Some(_)) => Err(ApiError::param(
            bracketed,
            format!("and {name} must not both be given"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn parse_search(p: &Params) -> Result<Option<ActionSearch>, ApiError> {
    // `search` is an object of `field`, `value` and `op` (a deepObject): any other key under
    // it is a mistake to point out, not an unknown parameter to ignore.
    if let Some(name) = p.names().find(|n| {
        *n == "search"
            || (n.starts_with("search[")
                && !matches!(*n, "search[field]" | "search[value]" | "search[op]"))
    }) {
        return Err(ApiError::param(
            name,
            "is not a search key: use search[field], search[value] and search[op]",
        ));
    }
    let field = either(p, "field")?;
    let value = either(p, "value")?;
    if let Some(op) = either(p, "op")?
        && op != "eq"
    {
        return Err(ApiError::param("search[op]", "must be eq"));
    }
    let (field, value) = match (field, value) {
        (None, None) => return Ok(None),
        (Some(f), Some(v)) => (f, v),
        (None, Some(_)) => {
            return Err(ApiError::param(
                "search[field]",
                "is required with search[value]",
            ));
        }
        (Some(_), None) => {
            return Err(ApiError::param(
                "search[value]",
                "is required with search[field]",
            ));
        }
    };
    if value.chars().count() > 1000 {
        return Err(ApiError::param(
            "search[value]",
            "must be at most 1000 characters",
        ));
    }
    let search = match field {
        "id" => ActionSearch::Id(Uuid::try_parse(value).ok()),
        "action_definition_id" => ActionSearch::DefinitionId(Uuid::try_parse(value).ok()),
        "variant" => ActionSearch::Variant(value.to_owned()),
        "state.status" => ActionSearch::Status(ActionStatus::parse(value)),
        f => {
            if let Some(key) = f.strip_prefix("tags.").filter(|k| !k.is_empty()) {
                ActionSearch::Tag(key.to_owned(), value.to_owned())
            } else if let Some(path) = f.strip_prefix("input.") {
                let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
                if keys.iter().any(|k| {
                    k.is_empty() || k.contains('"') || k.bytes().all(|b| b.is_ascii_digit())
                }) || keys.len() > 32
                {
                    return Err(ApiError::param(
                        "search[field]",
                        "input paths are dotted object keys (not empty, no quotes, not array indexes)",
                    ));
                }
                ActionSearch::Input(keys, value.to_owned())
            } else {
                return Err(ApiError::param(
                    "search[field]",
                    "must be id, action_definition_id, variant, state.status, tags.<key> or input.<path>",
                ));
            }
        }
    };
    Ok(Some(search))
}

/// Parses and checks every parameter; each error names its parameter.
pub fn parse_query(p: &Params) -> Result<RecordsRequest, ApiError> {
    let take = p.int::<u32>("take", 1..=MAX_TAKE)?.unwrap_or(DEFAULT_TAKE);
    let skip = p.int::<u64>("skip", 0..=MAX_SKIP)?.unwrap_or(0);
    let filter = ActionFilter {
        definition_id: p
            .str("action_definition_id")?
            .map(|v| Uuid::try_parse(v).ok()),
        variant: p.text("variant", 100)?,
        version: p.int::<u32>("version", 1..=u32::MAX)?,
        search: parse_search(p)?,
    };
    Ok(RecordsRequest {
        filter,
        skip,
        take,
        count_only: p.bool("count_only")?.unwrap_or(false),
        include_definition: p.bool("include_definition")?.unwrap_or(false),
        include_state: p.bool("include_state")?.unwrap_or(false),
    })
}

/// The definitions (at each record's version) with their destinations.
async fn definitions(
    state: &AppState,
    tenant: &Tenant,
    records: &[ActionRecord],
) -> Result<HashMap<(Uuid, u32), DefinitionItem>, ApiError> {
    let org = tenant.org_id().as_str();
    let mut found: HashMap<(Uuid, u32), DefinitionItem> = HashMap::new();
    let mut destinations: BTreeMap<Uuid, Option<Destination>> = BTreeMap::new();
    for r in records {
        let key = (r.definition_id, r.version);
        if found.contains_key(&key) {
            continue;
        }
        let Some(d): Option<ActionDefinition> = state
            .store()
            .get_action_definition(tenant, r.definition_id, Some(r.version))
            .await?
        else {
            continue;
        };
        let mut links = Vec::with_capacity(d.destinations.len());
        for l in &d.destinations {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                destinations.entry(l.destination_id)
            {
                slot.insert(
                    state
                        .store()
                        .get_destination(tenant, l.destination_id)
                        .await?,
                );
            }
            links.push(DefinitionDestinationItem {
                id: l.id.to_string(),
                action_definition_id: d.id.to_string(),
                destination_id: l.destination_id.to_string(),
                org_id: org.to_owned(),
                is_default: l.is_default,
                destination: destinations
                    .get(&l.destination_id)
                    .and_then(Option::as_ref)
                    .map(|dest| DestinationItem::new(org, dest)),
            });
        }
        found.insert(
            key,
            DefinitionItem {
                id: d.id.to_string(),
                org_id: org.to_owned(),
                variant: d.variant.clone(),
                version: d.version,
                alias: d.alias.clone(),
                schema: raw_json(&d.schema),
                deleted_at: d.deleted_at.map(Timestamp::to_rfc3339),
                destinations: links,
            },
        );
    }
    Ok(found)
}

/// The dialect's items of `records` (in their order), each with its events, and its state and
/// definition when asked for (also the request timeline's action items).
pub(crate) async fn record_items(
    state: &AppState,
    tenant: &Tenant,
    records: &[ActionRecord],
    include_state: bool,
    include_definition: bool,
) -> Result<Vec<RecordItem>, ApiError> {
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let mut events: HashMap<Uuid, Vec<EventItem>> = HashMap::new();
    let org = tenant.org_id().as_str();
    if !ids.is_empty() {
        for e in state.store().action_events(tenant, &ids).await? {
            events
                .entry(e.record_id)
                .or_default()
                .push(EventItem::new(org, &e));
        }
    }
    let defs = if include_definition {
        definitions(state, tenant, records).await?
    } else {
        HashMap::new()
    };
    Ok(records
        .iter()
        .map(|r| RecordItem {
            id: r.id.to_string(),
            org_id: org.to_owned(),
            action_definition_id: r.definition_id.to_string(),
            input: raw_json(&r.input),
            timeout: r.timeout_secs,
            tags: r.tags.clone(),
            state: include_state.then(|| (&r.state).into()),
            definition: if include_definition {
                defs.get(&(r.definition_id, r.version)).cloned()
            } else {
                None
            },
            events: events.remove(&r.id).unwrap_or_default(),
        })
        .collect())
}

/// List action records.
///
/// The org's action records, newest first, paged by `take` and `skip`, with the total
/// `count` of matching records.
#[utoipa::path(
    get, path = "/v1/orgs/{org_id}/actions/records", tag = "actions",
    params(("org_id" = String, Path, pattern = "^[0-9]+$", description = "The caller's org"), RecordsQuery),
    responses(
        (status = 200, description = "A page of action records", body = RecordsResponse),
        (status = 400, description = "A parameter is malformed or out of range", body = ActionsErrorBody),
        (status = 404, description = "`org_id` is not the key's org", body = ActionsErrorBody),
        OrgKeyErrors<ActionsErrorBody, { scope::READ }>,
    ),
    security(("arklow" = []), ("api_key" = []), ("bearer" = []), ("session" = []))
)]
pub async fn list_action_records(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Actions>,
    Ids(org_id, _): Ids<String, Actions>,
    RawQuery(query): RawQuery,
) -> Result<Json<RecordsResponse>, Failure<Actions>> {
    path_org(&state, Some(&caller), &org_id, OrgIdForm::Digits).await?;
    caller.require(Scope::Read)?;
    let request = parse_query(&Params::parse(query.as_deref()))?;
    let tenant = &caller.tenant;
    let (records, count) = if request.count_only {
        let n = state
            .store()
            .count_action_records(tenant, &request.filter)
            .await?;
        (Vec::new(), n)
    } else {
        state
            .store()
            .list_action_records(tenant, &request.filter, request.skip, request.take)
            .await?
    };
    let items = record_items(
        &state,
        tenant,
        &records,
        request.include_state,
        request.include_definition,
    )
    .await?;
    Ok(Json(RecordsResponse {
        data: RecordsData { items, count },
        errors: None,
    }))
}
