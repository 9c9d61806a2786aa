"""Settings, message schemas, naming and the catalogue."""
import json

import pytest

from shared import naming
from shared.catalogue import CatalogueError, load_catalogue
from shared.config import Settings, env_names
from shared.messages import MessageError, Reply, Request, Terminate, now_ms

pytestmark = pytest.mark.services("food", "imagenet")   # only these queues (tests/conftest.py provisioned)


def test_settings_read_from_environment_and_round_trip():
    s = Settings.from_env({"CLASSIFYCLOUD_PREFIX": "x", "CLASSIFYCLOUD_SERVICES": "a, b",
                           "CLASSIFYCLOUD_FETCH_ALLOW_LOOPBACK": "true", "CLASSIFYCLOUD_REPLY_TIMEOUT_S": "3.5"})
    assert (s.prefix, s.services, s.fetch_allow_loopback, s.reply_timeout_s) == ("x", ("a", "b"), True, 3.5)
    assert Settings.from_env(s.to_env()) == s
    assert s.bucket_name == "x-data"
    with pytest.raises(AttributeError):
        s.prefix = "y"


def test_settings_reject_a_bad_number_with_the_variable_name():
    with pytest.raises(ValueError, match="CLASSIFYCLOUD_MAX_WORKERS"):
        Settings.from_env({"CLASSIFYCLOUD_MAX_WORKERS": "many"})
    assert "CLASSIFYCLOUD_PREFIX" in env_names()


def test_request_round_trips_and_validates():
    r = Request(id="abc", service="imagenet", image={"url": "http://e.com/a.jpg"}, reply_to="q", top_k=3)
    assert Request.from_json(r.to_json()) == r
    for bad in ["not json", "[]", json.dumps({"v": 2}),
                json.dumps({"v": 1, "id": "a b", "service": "s", "image": {"url": "u"}}),
                json.dumps({"v": 1, "id": "a", "service": "s", "image": {"file": "u"}}),
                json.dumps({"v": 1, "id": "a", "service": "s", "image": {"url": "u"}, "top_k": 0})]:
        with pytest.raises(MessageError):
            Request.from_json(bad)


def test_a_presigned_items_image_carries_when_its_link_dies_and_nothing_else():
    ok = Request(id="b-0", service="imagenet", image={"url": "https://x/y.jpg?X-Amz-Signature=1", "expires_at": 5},
                 reply_to=None)
    assert Request.from_json(ok.to_json()).image == {"url": "https://x/y.jpg?X-Amz-Signature=1", "expires_at": 5}
    for image in ({"url": "https://x/y.jpg", "expires_at": True}, {"url": "https://x/y.jpg", "expires_at": "5"},
                  {"s3": "s3://b/k", "expires_at": 5}, {"url": "https://x/y.jpg", "colour": 1}):
        with pytest.raises(MessageError):
            Request.from_json(Request(id="b-0", service="imagenet", image=image, reply_to=None).to_json())


def test_a_request_says_whether_it_wants_a_result_record_and_a_plain_one_keeps_its_v1_shape():
    sync = Request(id="s1", service="imagenet", image={"url": "http://e.com/a.jpg"}, reply_to="q", record=False)
    assert json.loads(sync.to_json())["record"] is False and not Request.from_json(sync.to_json()).wants_record
    plain = Request(id="p1", service="imagenet", image={"url": "http://e.com/a.jpg"}, reply_to="q")
    assert "record" not in json.loads(plain.to_json()) and Request.from_json(plain.to_json()).wants_record
    job = Request(id="j1", service="imagenet", image={"url": "http://e.com/a.jpg"}, reply_to=None, record=False)
    assert job.wants_record   # no reply queue: the record is the only answer
    with pytest.raises(MessageError, match="record"):
        Request.from_json({**json.loads(plain.to_json()), "record": "no"})


def test_reply_and_terminate_schemas():
    rep = Reply.failure("id1", "imagenet", "invalid_image", "not an image")
    assert Reply.from_json(rep.to_json()) == rep
    assert rep.to_dict()["error"] == {"code": "invalid_image", "message": "not an image"}
    t = Terminate(issued_at=now_ms() - 10_000)
    assert not Terminate.from_json(t.to_json()).is_fresh(5)
    assert Terminate().is_fresh(5)


def test_queue_names_follow_the_protocol():
    assert naming.request_queue("cc", "imagenet") == "cc-requests-imagenet"
    assert naming.dead_letter_queue("cc", "imagenet") == "cc-requests-imagenet-dlq"
    assert naming.terminate_queue("cc") == "cc-terminate"
    assert naming.reply_queue("cc").startswith("cc-reply-")
    assert naming.reply_queue("cc") != naming.reply_queue("cc")
    assert naming.service_from_queue("cc", "cc-requests-food") == "food"
    assert naming.service_from_queue("cc", "cc-requests-food-dlq") is None


def test_catalogue_loads_imagenet_and_rejects_bad_entries(tmp_path):
    cat = load_catalogue()
    assert cat["imagenet"].num_classes == 1000 and "imagenet" in cat.available()
    bad = tmp_path / "c.yaml"
    bad.write_text("services:\n  x:\n    architecture: resnet\n    num_classes: 2\n    colour: red\n")
    with pytest.raises(CatalogueError, match="unknown keys"):
        load_catalogue(str(bad))
    missing = tmp_path / "m.yaml"
    missing.write_text("services:\n  x:\n    architecture: torchvision:resnet18\n    num_classes: 2\n")
    assert "not configured" in load_catalogue(str(missing))["x"].unavailable_reason()


def test_provisioning_creates_queues_with_redrive(settings, provisioned):
    from shared.aws import client
    sqs = client("sqs", settings)
    attrs = sqs.get_queue_attributes(QueueUrl=provisioned["imagenet"], AttributeNames=["All"])["Attributes"]
    assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] in (5, "5")
    assert sqs.get_queue_url(QueueName=naming.terminate_queue(settings.prefix))["QueueUrl"]
