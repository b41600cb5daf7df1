//! The `actions` dialect: `GET /v1/orgs/{org_id}/actions/records`, exactly as seed 002
//! documents it: offset pages (`take` 1..50, default 20; `skip`), a total `count`, the
//! filters, `search[field|value|op]` (or the form-exploded `field`/`value`/`op`), and
//! `definition`/`state` only when their `include_*` flag is true. Newest first.

use std::collections::{BTreeMap, HashMap};

use apitrail_model::{
    ActionDefinition, ActionEvent, ActionFilter, ActionRecord, ActionSearch, ActionStatus,
    Destination, OrgId, Scope, Tags, Tenant, Timestamp,
};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::actions::{ConfigBody, StateBody};
use crate::auth::Authed;
use crate::error::{ApiError, Envelope, ErrorKind, Failure};
use crate::params::Params;
use crate::state::AppState;

/// The seed's default page size.
pub const DEFAULT_TAKE: u32 = 20;
/// The seed's maximum page size.
pub const MAX_TAKE: u32 = 50;
/// The deepest `skip` accepted: an offset costs time in proportion to it.
pub const MAX_SKIP: u64 = 1_000_000;

/// The actions dialect's error envelope: `{"data": null, "errors": [{"code", "message"}]}`.
#[derive(Debug)]
pub enum Actions {}

impl Envelope for Actions {
    fn body(err: &ApiError, _request_id: &str) -> Value {
        let (_, code) = err.status_and_code();
        json!({ "data": null, "errors": [{ "code": code, "message": err.message }] })
    }
}

/// The error body of the actions dialect (documentation only).
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionsErrorBody {
    /// Always null on errors.
    #[schema(value_type = Option<Object>)]
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
    id: String,
    org_id: String,
    updated_at: String,
    label: String,
    #[serde(rename = "type")]
    kind: &'static str,
    config: ConfigBody,
    deleted_at: Option<String>,
    tags: Tags,
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
    id: String,
    action_definition_id: String,
    destination_id: String,
    org_id: String,
    is_default: bool,
    destination: Option<DestinationItem>,
}

/// The definition (at the record's version) as the seed prints it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DefinitionItem {
    id: String,
    org_id: String,
    variant: String,
    version: u32,
    alias: Vec<String>,
    #[schema(value_type = Object)]
    schema: Box<RawValue>,
    deleted_at: Option<String>,
    destinations: Vec<DefinitionDestinationItem>,
}

/// One event of a record.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventItem {
    id: String,
    action_record_id: String,
    org_id: String,
    kind: String,
    status: &'static str,
    attempt: u32,
    available_at: Option<String>,
    timeout_at: Option<String>,
    message: Option<String>,
    #[schema(value_type = Option<Object>)]
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
            data: e.data.as_deref().map(raw),
        }
    }
}

/// An action record: the seed's fields; `state` and `definition` only when asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordItem {
    id: String,
    org_id: String,
    action_definition_id: String,
    #[schema(value_type = Object)]
    input: Box<RawValue>,
    timeout: u32,
    tags: Tags,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<StateBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    definition: Option<DefinitionItem>,
    events: Vec<EventItem>,
}

/// The page.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordsData {
    items: Vec<RecordItem>,
    /// How many records match in all (not the page size).
    count: u64,
}

/// The response: `{"data": {"items", "count"}, "errors": null}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordsResponse {
    data: RecordsData,
    #[schema(value_type = Option<Vec<ActionsError>>)]
    errors: Option<()>,
}

/// Query parameters (documentation only; parsing is in [`parse_query`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RecordsQuery {
    /// Page size, 1-50 (default 20).
    take: Option<u32>,
    /// Records to skip (default 0).
    skip: Option<u64>,
    /// `search[field]`: id, action_definition_id, variant, state.status, tags.<key> or
    /// input.<dotted.path> (also accepted as `field`).
    #[param(rename = "search[field]")]
    search_field: Option<String>,
    /// `search[value]` (also `value`).
    #[param(rename = "search[value]")]
    search_value: Option<String>,
    /// `search[op]`: eq (also `op`).
    #[param(rename = "search[op]")]
    search_op: Option<String>,
    /// Only count: `items` is empty.
    count_only: Option<bool>,
    /// Filter by definition id.
    action_definition_id: Option<String>,
    /// Filter by variant.
    variant: Option<String>,
    /// Filter by definition version.
    version: Option<u32>,
    /// Include each record's definition (at its version).
    include_definition: Option<bool>,
    /// Include each record's state.
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
    if value.len() > 1000 {
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

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default())
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
                schema: raw(&d.schema),
                deleted_at: d.deleted_at.map(Timestamp::to_rfc3339),
                destinations: links,
            },
        );
    }
    Ok(found)
}

/// List action records.
#[utoipa::path(
    get, path = "/v1/orgs/{org_id}/actions/records", tag = "actions",
    params(("org_id" = String, Path, description = "The caller's org (pattern ^[0-9]+$)"), RecordsQuery),
    responses(
        (status = 200, body = RecordsResponse),
        (status = 400, body = ActionsErrorBody),
        (status = 401, body = ActionsErrorBody),
        (status = 403, body = ActionsErrorBody),
        (status = 404, body = ActionsErrorBody)
    ),
    security(("arklow" = []), ("api_key" = []), ("bearer" = []), ("session" = []))
)]
pub async fn list_action_records(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Actions>,
    Path(org_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<RecordsResponse>, Failure<Actions>> {
    if org_id.is_empty() || !org_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::param("org_id", "must match ^[0-9]+$").into());
    }
    if caller.tenant.org_id() != &OrgId::parse(&org_id).map_err(|_| not_found())? {
        return Err(not_found().into());
    }
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
    let defs = if request.include_definition {
        definitions(&state, tenant, &records).await?
    } else {
        HashMap::new()
    };
    let items = records
        .iter()
        .map(|r| RecordItem {
            id: r.id.to_string(),
            org_id: org.to_owned(),
            action_definition_id: r.definition_id.to_string(),
            input: raw(&r.input),
            timeout: r.timeout_secs,
            tags: r.tags.clone(),
            state: request.include_state.then(|| (&r.state).into()),
            definition: if request.include_definition {
                defs.get(&(r.definition_id, r.version)).cloned()
            } else {
                None
            },
            events: events.remove(&r.id).unwrap_or_default(),
        })
        .collect();
    Ok(Json(RecordsResponse {
        data: RecordsData { items, count },
        errors: None,
    }))
}

fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such org")
}
