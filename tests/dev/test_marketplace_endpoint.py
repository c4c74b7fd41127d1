"""The demo marketplace endpoint of `billing dev` takes only events signed with its secret."""

from __future__ import annotations

import time

import httpx
import orjson

from app.dev.siblings import DEV_MARKETPLACE_SECRET, MARKETPLACE_EVENTS_PATH, build_app
from app.events.signature import SIGNATURE_HEADER, sign


async def test_the_demo_endpoint_keeps_signed_events_and_refuses_others() -> None:
    transport = httpx.ASGITransport(app=build_app())
    body = orjson.dumps({"id": "e1", "type": "usage.threshold_reached", "data": {"threshold_percent": 100}})
    async with httpx.AsyncClient(transport=transport, base_url="http://siblings.test") as http:
        signed = sign(body, ["whsec_other", DEV_MARKETPLACE_SECRET], int(time.time()))
        ok = await http.post(MARKETPLACE_EVENTS_PATH, content=body, headers={SIGNATURE_HEADER: signed})
        forged = sign(body, ["whsec_other"], int(time.time()))
        bad = await http.post(MARKETPLACE_EVENTS_PATH, content=body, headers={SIGNATURE_HEADER: forged})
        listed = (await http.get(MARKETPLACE_EVENTS_PATH)).json()
    assert (ok.status_code, bad.status_code) == (200, 400)
    assert [(e["id"], e["signature_verified"]) for e in listed["events"]] == [("e1", True)]
