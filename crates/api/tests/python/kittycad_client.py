"""Drives apitrail's zoo dialect with the official `kittycad` client (PyPI).

Run by `crates/api/tests/it/kittycad_client.rs` against a live apitrail; reads the server and key
from the environment and prints what the client saw as one JSON object, which the Rust test
compares with the records it ingested. Any exception (a response the client's models reject,
an HTTP error, a bad page token) fails the run with a traceback.
"""

import json
import os

from kittycad import KittyCAD
from kittycad.exceptions import KittyCADAPIError
from kittycad.models.created_at_sort_mode import CreatedAtSortMode

NIL = "00000000-0000-0000-0000-000000000000"


def ids(calls):
    return [str(c.id) for c in calls]


def main():
    client = KittyCAD(
        token=os.environ["APITRAIL_TOKEN"], base_url=os.environ["APITRAIL_BASE_URL"]
    )
    api = client.api_calls
    out = {}
    # Auto-pagination follows `next_page` until it is null.
    out["org_desc"] = ids(api.org_list_api_calls(limit=7))
    out["org_asc"] = ids(
        api.org_list_api_calls(limit=10, sort_by=CreatedAtSortMode.CREATED_AT_ASCENDING)
    )
    out["org_default"] = ids(api.org_list_api_calls())
    out["user"] = ids(api.user_list_api_calls(limit=4))
    out["user_me"] = ids(api.list_api_calls_for_user(id="me", limit=5))
    out["user_by_id"] = ids(
        api.list_api_calls_for_user(id=os.environ["APITRAIL_OTHER_USER"], limit=6)
    )

    fetched = api.get_api_call_for_org(id=os.environ["APITRAIL_FETCH_ID"])
    out["fetched"] = json.loads(fetched.model_dump_json())
    own = api.get_api_call_for_user(id=out["user"][0])
    out["fetched_own"] = str(own.id)

    # `get_api_call` (GET /api-calls/{id}): with an admin key, any call of the org, also
    # another user's.
    via_get = api.get_api_call(id=os.environ["APITRAIL_FETCH_ID"])
    out["fetched_any"] = json.loads(via_get.model_dump_json())
    out["fetched_other_user"] = str(
        api.get_api_call(id=os.environ["APITRAIL_OTHER_CALL"]).id
    )
    try:
        api.get_api_call(id=NIL)
        out["missing_any"] = None
    except KittyCADAPIError as e:
        out["missing_any"] = {"status": e.status_code, "error_code": e.error_code}

    try:
        api.get_api_call_for_org(id=NIL)
        out["missing"] = None
    except KittyCADAPIError as e:
        out["missing"] = {"status": e.status_code, "error_code": e.error_code}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
