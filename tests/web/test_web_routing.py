"""Route rules declared on the views: the edge hooks, the body limits and the OpenAPI document read them."""
from __future__ import annotations

import pytest
from openapi_check import load_spec
from web_peer import PeerWorker

from webserver.docs import KEY_SECURITY
from webserver.routing import UPLOAD, rules_for

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

PUBLIC_PATHS = {"/", "/livez", "/readyz", "/healthz", "/openapi.json", "/docs", "/services", "/static/<path:filename>"}
# the Open Inference Protocol's probes (unlogged) and metadata (logged, as /services); only infer needs a key
OIP_CATALOGUE = {"/v2", "/v2/models/<service>", "/v2/models/<service>/versions/<version>"}
OIP_PUBLIC = OIP_CATALOGUE | {"/v2/health/live", "/v2/health/ready", "/v2/models/<service>/ready",
                              "/v2/models/<service>/versions/<version>/ready"}


class CountingCatalogue:
    """A catalogue that counts how often its services are read (each read of a live one is a snapshot)."""

    def __init__(self, inner):
        self.inner = inner
        self.reads = 0

    @property
    def services(self):
        self.reads += 1
        return self.inner.services

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_each_route_declares_on_its_view_whether_it_is_public_logged_an_upload_or_owner_checked(app):
    by_rule = [(rule.rule, rules_for(app, rule.endpoint)) for rule in app.url_map.iter_rules()]
    assert {path for path, rules in by_rule if rules.public} == PUBLIC_PATHS | OIP_PUBLIC
    assert {path for path, rules in by_rule if rules.unlogged} == (PUBLIC_PATHS | OIP_PUBLIC) - {"/services"} \
        - OIP_CATALOGUE
    uploads = {path for path, rules in by_rule if rules.body == UPLOAD}
    assert uploads == {"/classify", "/jobs", "/cv/<service>", "/cv/mcloud/skin", "/faces/<gallery>",
                       "/v2/models/<service>/infer", "/v2/models/<service>/versions/<version>/infer"}
    # GET and DELETE /jobs/<job_id> are two views, each checked: only the job's key reads or cancels it
    assert [path for path, rules in by_rule if rules.owner_checked] == ["/jobs/<job_id>", "/jobs/<job_id>"]
    assert all(rules.owner_checked for path, rules in by_rule if path == "/jobs/<job_id>")


def test_the_probes_live_in_the_health_module_and_the_docs_blueprint_is_registered_by_create_app(app):
    assert {"health.healthz", "health.livez", "health.readyz"} <= set(app.view_functions)
    assert app.view_functions["health.healthz"].__module__ == "webserver.health"
    assert {"docs.openapi", "docs.docs", "docs.index"} <= set(app.view_functions)
    assert "docs" in app.blueprints and "health" in app.blueprints


def test_a_classification_reads_the_catalogue_once(make_app, web_settings, provisioned, catalogue):
    counting = CountingCatalogue(catalogue)
    app = make_app(web_settings, catalogue=counting)
    peer = PeerWorker(web_settings).start()
    try:
        oip = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["iVBORw0KGgo="]}]}
        for path, kw in [("/classify", {"json": {"url": "https://example.com/a.jpg"}}),
                         ("/v2/models/imagenet/infer", {"json": oip}),
                         ("/cv/imagenet", {"data": {"image": "https://example.com/a.jpg"}}),
                         ("/jobs", {"json": {"url": "https://example.com/a.jpg"}})]:
            before = counting.reads
            r = app.test_client().post(path, **kw)
            assert r.status_code in (200, 202), (path, r.get_json())
            assert counting.reads - before == 1, path
    finally:
        peer.stop()


def test_the_served_document_asks_for_a_key_exactly_where_the_server_checks_one(make_app, web_settings):
    off = make_app(web_settings).test_client().get("/openapi.json").get_json()
    on = make_app(web_settings.replace(api_keys="on")).test_client().get("/openapi.json").get_json()
    assert "security" not in off and "security" not in on
    ops = lambda doc: [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()
                       if isinstance(op, dict) and "responses" in op]
    assert all(op["security"] == [] and "401" not in op["responses"] for _, _, op in ops(off))
    for path, method, op in ops(on):
        public = path in {"/", "/livez", "/readyz", "/healthz", "/openapi.json", "/docs", "/services",
                          "/static/{filename}"} or (path.startswith("/v2") and not path.endswith("/infer"))
        assert op["security"] == ([] if public else KEY_SECURITY), (method, path)
        assert ("401" in op["responses"]) is not public, (method, path)
    assert off == load_spec(False) and on == load_spec(True)


def test_the_document_declares_the_error_statuses_each_route_declares(app):
    spec = load_spec()
    assert {"400", "413", "415", "422", "503", "504"} <= set(spec["paths"]["/classify"]["post"]["responses"])
    assert spec["paths"]["/cv/{service}"]["post"]["responses"]["415"] == {"$ref": "#/components/responses/XCloudError"}
    assert {"200", "503"} == set(spec["paths"]["/healthz"]["get"]["responses"])


def test_a_form_field_given_twice_is_answered_400_not_read_as_its_first_value(web):
    for path in ("/classify", "/jobs", "/cv/imagenet"):
        field = "image" if path.startswith("/cv/") else "url"
        r = web.post(path, data={field: ["https://example.com/a.jpg", "https://example.com/b.jpg"]},
                     content_type="multipart/form-data")
        assert r.status_code == 400, (path, r.get_json())
