"""schemathesis hooks for apitrail: rules of the API that an OpenAPI document cannot state.

OpenAPI describes each parameter and field on its own, so a case that schemathesis generates
as valid may break a rule between two of them, name a resource that does not exist, or carry
a token only the server can issue. Such a case is not valid, and the server rightly answers
400. Each rule below is stated in the document's descriptions; the hook makes the *valid*
(positive) cases obey it just before they are sent, in every phase (stateful links
included), and schemathesis then re-checks the case against the schema. Negative cases are
sent as generated.

schemathesis_run.py loads this module through the config file it writes, and passes the ids
of the fixtures it made (`APITRAIL_ST_FIXTURES`, JSON).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from datetime import datetime, timedelta, timezone

import schemathesis

FIXTURES: dict[str, str] = json.loads(os.environ.get("APITRAIL_ST_FIXTURES", "{}"))

# Page tokens that only a previous page issues (checksummed, bound to their sort), and the
# record ids an export or a tail resumes after (only the org's own records resume).
SERVER_ISSUED = ("cursor", "page_token", "after", "last_event_id")
# (lower, upper) query parameters: the lower bound may not exceed the upper one.
ORDERED_PAIRS = (("status_min", "status_max"), ("from", "to"))


def _comparable(value: object) -> object | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _query(query: dict) -> None:
    for name in SERVER_ISSUED:
        query.pop(name, None)
    for low, high in ORDERED_PAIRS:
        a, b = _comparable(query.get(low)), _comparable(query.get(high))
        try:
            if a is not None and b is not None and a > b:
                query[low], query[high] = query[high], query[low]
        except TypeError:  # not comparable (e.g. an int and a date)
            pass


def _plain_price(price: object) -> object:
    """A numeric price must read as a plain decimal of at most 18 digits each side of the
    point; Python writes small and large floats with an exponent."""
    if isinstance(price, float) and math.isfinite(price):
        if "e" in repr(price) or len(repr(price).split(".")[-1]) > 18:
            return round(price, 6) if "e" not in repr(round(price, 6)) else 0.5
    return price


def _uuid(raw: object) -> int | None:
    """The value of a UUID in any form the server reads (hyphenated, simple, braced, URN with
    its prefix in any case)."""
    if not isinstance(raw, str):
        return None
    text = raw[9:] if raw[:9].lower() == "urn:uuid:" else raw.strip("{}")
    digits = text.replace("-", "")
    try:
        return int(digits, 16) if len(digits) == 32 else None
    except ValueError:
        return None


def _recent(value: object, minutes_ago: int) -> object:
    """A generated timestamp moved to `minutes_ago` before now, in its own offset and with
    its own fraction of a second (empty and null stay absent)."""
    if not isinstance(value, str) or not value:
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    zone = parsed.tzinfo or timezone.utc
    moved = (datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)).astimezone(zone)
    text = moved.replace(microsecond=parsed.microsecond).isoformat()
    return text.replace("+00:00", "Z") if value.endswith(("Z", "z")) else text


def _records(records: list) -> None:
    """Ingest: records name the test org, no two records of a batch share an id, and their
    times lie in the server's ingest window (it moves with the clock, so no schema can state
    it): the last hour, `started_at` before `completed_at`."""
    seen: set[int] = set()
    for record in records:
        if not isinstance(record, dict):
            continue
        record["org_id"] = FIXTURES["org"]
        for field, minutes_ago in (("created_at", 30), ("started_at", 50), ("completed_at", 40)):
            if field in record:
                record[field] = _recent(record[field], minutes_ago)
        parsed = _uuid(record.get("id"))
        if parsed is not None:
            if parsed in seen:
                record["id"] = str(uuid.uuid4())
            seen.add(parsed)
        if "price" in record:
            record["price"] = _plain_price(record["price"])


def _body(operation: str, body: object) -> None:
    if operation in ("POST /v1/destinations", "PATCH /v1/destinations/{id}"):
        # A destination's credential must exist in the org.
        if isinstance(body, dict) and isinstance(body.get("credential_id"), str):
            body["credential_id"] = FIXTURES["credential"]
    elif operation in ("POST /v1/action-definitions", "PUT /v1/action-definitions/{id}"):
        if isinstance(body, dict):
            # Its destinations must exist; no alias may repeat the variant.
            if isinstance(body.get("destinations"), list):
                body["destinations"] = [
                    {"destination_id": FIXTURES["destination"], "is_default": True}
                ]
            if isinstance(body.get("alias"), list):
                body["alias"] = [a for a in body["alias"] if a != body.get("variant")]
    elif operation == "POST /v1/orgs/{org_id}/actions":
        # The action, its version and the destination must exist.
        if isinstance(body, dict):
            body["action"] = FIXTURES["action"]
            if body.get("version") is not None:
                body["version"] = 1
            if body.get("destination_id") is not None:
                body["destination_id"] = FIXTURES["destination"]
    elif operation in ("POST /v1/ingest/requests", "POST /v1/ingest/audit-events"):
        if isinstance(body, list):
            _records(body)
    elif operation == "POST /v1/viewer-tokens":
        # A forced filter cannot apply to action records (they carry no user or key), nor
        # api_key_id to the audit log: such a token is refused by design.
        if isinstance(body, dict) and isinstance(body.get("filter"), dict):
            f = body["filter"]
            kinds = body.get("kinds")
            if any(f.get(k) is not None for k in ("user_id", "api_key_id")):
                if not isinstance(kinds, list):
                    body["kinds"] = ["request_logs"]
                else:
                    kinds[:] = [k for k in kinds if k != "action_records"]
                    if f.get("api_key_id") is not None:
                        kinds[:] = [k for k in kinds if k != "audit_log"]
                    if not kinds:
                        kinds.append("request_logs")


# Calls that would delete, replace or revoke a fixture (whose id a stateful sequence can
# learn from a list) and leave every later valid case naming it refused.
PROTECTED = {
    "DELETE /v1/destinations/{id}": "destination",
    "DELETE /v1/action-definitions/{id}": "definition",
    "PUT /v1/action-definitions/{id}": "definition",
    "DELETE /v1/api-keys/{id}": "key",
    "DELETE /admin/v1/orgs/{org_id}/api-keys/{id}": "key",
}


def _spare_fixtures(operation: str, case) -> None:
    """Such a call goes to a fresh id instead (a 404) in any mode."""
    fixture = PROTECTED.get(operation)
    parameters = case.path_parameters
    if fixture and isinstance(parameters, dict) and parameters.get("id") == FIXTURES[fixture]:
        parameters["id"] = str(uuid.uuid4())


@schemathesis.hook
def before_call(context, case, kwargs):
    operation = f"{case.operation.method.upper()} {case.operation.path}"
    _spare_fixtures(operation, case)
    meta = case.meta
    if meta is not None and not meta.generation.mode.is_positive:
        return
    if isinstance(case.query, dict):
        _query(case.query)
        # Stats bound the buckets of a range (1,500): a valid interval with two random
        # instants is mostly a 400 by design, while the default range always fits.
        if operation == "GET /v1/logs/stats":
            case.query.pop("from", None)
            case.query.pop("to", None)
    # A case-insensitive mapping, not a dict.
    if case.headers is not None:
        for name in [h for h in list(case.headers) if h.lower() == "last-event-id"]:
            del case.headers[name]
    _body(operation, case.body)
