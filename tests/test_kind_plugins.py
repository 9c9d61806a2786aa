"""A kind is one plug-in: its declarations (file options, parameters, result shape) are read from the kinds table."""
from __future__ import annotations

import inspect

import pytest
import torch
import yaml
from conftest import only_services
from PIL import ImageStat

from shared import kinds
from shared.catalogue import CatalogueError
from shared.config import Settings
from shared.live_catalogue import parse_s3_entry
from worker.models import kinds as worker_kinds
from worker.models.engine import decode_image
from worker.models.handler import Handler
from worker.models.registry import ModelRegistry

ENTRY = {"architecture": "resnet18", "num_classes": 2, "weights": "w.safetensors"}


class Calibrated(kinds.Kind):
    """A kind whose entries name a calibration table to load (a file option it declares)."""

    name = "calibrated"
    file_options = ("calibration",)

    def xcloud(self, results):
        return results

    def summary(self, results):
        return "calibrated"


def test_a_kinds_declared_file_option_in_an_s3_entry_must_stay_in_its_service_folder(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "calibrated", Calibrated())
    entry = {**ENTRY, "kind": "calibrated", "options": {"calibration": "table.json", "note": "../free text"}}
    ok = parse_s3_entry("cal", yaml.safe_dump(entry), "b")
    assert ok.options == {"calibration": "s3://b/models/cal/table.json", "note": "../free text"}
    for bad in ("/etc/passwd", "../imagenet/table.json", "s3://b/elsewhere/table.json",
                "s3://other/table.json", "builtin:../../x"):
        doc = {**entry, "options": {"calibration": bad}}
        with pytest.raises(CatalogueError, match=r"options\.calibration .* must"):
            parse_s3_entry("cal", yaml.safe_dump(doc), "b")


def test_the_confinement_follows_the_declaration_not_a_list_of_option_names(monkeypatch):
    undeclared = Calibrated()
    undeclared.file_options = ()
    monkeypatch.setitem(kinds.KINDS, "calibrated", undeclared)
    doc = {**ENTRY, "kind": "calibrated", "options": {"calibration": "table.json"}}
    assert parse_s3_entry("cal", yaml.safe_dump(doc), "b").options["calibration"] == "table.json"
    # the embedding kind declares its dlib shape model: confined with no list elsewhere naming it
    assert kinds.get("embedding").file_options == ("shape_predictor",)
    assert kinds.file_options("no-such-kind") == ("shape_predictor",)   # unknown: every kind's, until refused


def test_the_served_document_takes_each_kinds_parameters_and_result_shape_from_the_table():
    from openapi_check import load_spec
    spec = load_spec()
    schemas = spec["components"]["schemas"]
    assert schemas["Result"]["anyOf"] == [{"$ref": f"#/components/schemas/Result_{n}"} for n in kinds.KINDS]
    for name, kind in kinds.KINDS.items():
        assert schemas[f"Result_{name}"] == kind.result_schema
    query = {p["name"]: p for p in spec["paths"]["/classify"]["get"]["parameters"] if "name" in p}
    assert query["gallery"]["schema"] == kinds.get("embedding").request_params["gallery"]["schema"]
    assert "kind embedding" in query["gallery"]["description"]
    for body in ("ClassifyInput", "JobInput"):
        for content in spec["components"]["requestBodies"][body]["content"].values():
            assert content["schema"]["properties"]["gallery"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"


class Recorded(Handler):
    """A real handler whose steps note themselves: mean brightness, answered as one result."""

    kind = "recorded"

    def __init__(self, spec, steps: list):
        self.spec, self.steps, self.labels = spec, steps, ["mean"]

    def load(self):
        self.steps.append("load")
        self.version = "1"
        return self

    def preprocess(self, image):
        self.steps.append("preprocess")
        return torch.tensor(float(ImageStat.Stat(image.convert("L")).mean[0]) / 255)

    def infer(self, batch):
        self.steps.append(f"infer {tuple(batch.shape)}")
        return batch

    def postprocess(self, output, top_ks, params):
        self.steps.append("postprocess")
        return [[{"label": "mean", "index": 0, "score": round(float(m), 4)}] for m in output]


def test_handle_runs_load_preprocess_infer_postprocess_in_order_and_loads_once(catalogue, sample_bytes):
    steps: list = []
    handler = Recorded(catalogue["imagenet"], steps)
    photos = [decode_image(sample_bytes[p]) for p in ("chelsea", "rocket")]
    first = handler.handle(photos)
    assert steps == ["load", "preprocess", "preprocess", "infer (2,)", "postprocess"]
    assert handler.handle(photos[:1]) == first[:1] and steps[5:] == ["preprocess", "infer (1,)", "postprocess"]


def test_every_handler_postprocesses_with_one_signature_and_derived_services_wrap_their_parent(catalogue):
    from worker.models.derived import DerivedHandler
    from worker.models.keras_classifier import KerasClassifier
    for cls in [*worker_kinds.HANDLERS.values(), KerasClassifier, DerivedHandler]:
        assert issubclass(cls, Handler)
        assert list(inspect.signature(cls.postprocess).parameters)[2:] == ["top_ks", "params"]
    registry = ModelRegistry(only_services(catalogue, ("imagenet", "food")),
                             Settings(device="cpu", metrics_enabled=False)).load()
    food, imagenet = registry.get("food"), registry.get("imagenet")
    assert isinstance(food, DerivedHandler) and food.base is imagenet and food.forward_owner is imagenet
