"""Route rules declared on the view: who may call it, whether it is logged, what body it takes, what it answers.

The edge hooks (keys, usage log, body limits) and the OpenAPI document read these from
app.view_functions[request.endpoint], so a route's rules live beside the route, not in name tables.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

# the kinds of request body a route takes (webserver.limits sizes each)
SMALL, UPLOAD, BATCH = "small", "upload", "batch"


@dataclass(frozen=True)
class RouteRules:
    """What the edge applies to one view, and the error statuses the view itself answers."""

    public: bool = False          # served without an API key (probes, pages, the catalogue)
    unlogged: bool = False        # not written to the usage log (probes and pages are not API calls)
    body: str = SMALL             # SMALL, UPLOAD (an image) or BATCH (a list of URLs)
    owner_checked: bool = False   # with keys on, only the key that made the job may read it (404 to others)
    answers: tuple[int, ...] = ()  # the 4xx/5xx statuses the view answers (the OpenAPI document lists them)


DEFAULT_RULES = RouteRules()
PAGE_RULES = RouteRules(public=True, unlogged=True)


def route(**rules):
    """Decorator: declare a view's RouteRules (read by the edge hooks and the OpenAPI document)."""
    declared = RouteRules(**rules)

    def declare(view):
        view.route_rules = declared
        return view
    return declare


def rules_for(app: Flask, endpoint: str | None) -> RouteRules:
    """The rules of an endpoint; an unmatched request (404/405) gets the defaults (key checked, logged)."""
    view = app.view_functions.get(endpoint) if endpoint else None
    return getattr(view, "route_rules", DEFAULT_RULES)
