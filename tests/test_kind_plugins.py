"""A kind is one plug-in: its declarations (file options, parameters, result shape) are read from the kinds table."""
from __future__ import annotations

import base64
import inspect
import json
import sys

import pytest
import torch
import yaml
from catalogue_subset import only_services
from PIL import ImageStat
from test_worker_loop import in_thread

from classifycloud.cli import main as cli_main
from classifycloud.provision import ensure_all
from shared import kinds
from shared.catalogue import Catalogue, CatalogueError, load_catalogue
from shared.config import Settings
from shared.live_catalogue import parse_s3_entry
from webserver.app import create_app
from worker.loop import Worker
from worker.models import kinds as worker_kinds
from worker.models.engine import InferenceEngine, decode_image
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
    declared = kinds.get("embedding").request_params["gallery"]["schema"]
    assert query["gallery"]["x-kind-schema"] == declared   # other kinds ignore it: any value is taken
    assert "kind embedding" in query["gallery"]["description"]
    for body in ("ClassifyInput", "JobInput"):
        for content in spec["components"]["requestBodies"][body]["content"].values():
            shown = content["schema"]["properties"]["gallery"]
            assert shown["x-kind-schema"] == declared and declared["pattern"] == "^[A-Za-z0-9_-]{1,64}$"


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


# --- a kind added as exactly its two files, registered through CLASSIFYCLOUD_KINDS -------------------------

GLOW_CONTRACT = '''
from shared.kinds import Kind, ParamError


class Glow(Kind):
    name = "glow"
    handler = "glowkinds.glow_handler:GlowHandler"
    file_options = ("palette",)
    request_params = {"level": {"schema": {"type": "number", "minimum": 0, "maximum": 1},
                                "description": "the brightness that counts as bright (default 0.5)"}}
    result_schema = {"type": "object", "required": ["label", "index", "score", "level"],
                     "properties": {"label": {"type": "string"}, "index": {"type": "integer"},
                                    "score": {"type": "number"}, "level": {"type": "number"}}}

    def params(self, field, spec, tenant):
        level = field("level")
        if level is None:
            return {}
        try:
            return {"level": float(level)}
        except (TypeError, ValueError):
            raise ParamError("invalid_level", "level must be a number") from None

    def xcloud(self, results):
        return [{"name": r["label"], "brightness": r["score"]} for r in results]

    def summary(self, results):
        return f"{results[0]['label']} at {results[0]['score']:.2f}"


KIND = Glow()
'''

GLOW_HANDLER = '''
import json

import torch
import torchvision.transforms.functional as TF

from worker.models.handler import Handler
from worker.models.loader import fetch_to_local, sha256_of


class GlowHandler(Handler):
    kind = "glow"

    def __init__(self, spec, settings, device=None):
        self.spec, self.settings, self.device, self.labels = spec, settings, device, []

    def load(self):
        path = fetch_to_local(self.spec.options["palette"], self.settings)   # the kind's file option
        with open(path, encoding="utf-8") as fh:
            self.labels = json.load(fh)
        self.version = sha256_of(path)[:12]
        return self

    def preprocess(self, image):
        return TF.to_tensor(image.convert("L")).mean()

    def infer(self, batch):
        return batch

    def postprocess(self, output, top_ks, params):
        out = []
        for m, p in zip(output.tolist(), params):
            level = (p or {}).get("level", 0.5)
            out.append([{"label": self.labels[m >= level], "index": int(m >= level), "score": round(m, 6),
                         "level": level}])
        return out
'''


@pytest.fixture
def glow_kind(tmp_path, monkeypatch):
    """The glow kind's two files in a package on sys.path, named in CLASSIFYCLOUD_KINDS; gone afterwards."""
    package = tmp_path / "plugins" / "glowkinds"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "glow.py").write_text(GLOW_CONTRACT)
    (package / "glow_handler.py").write_text(GLOW_HANDLER)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setenv(kinds.PLUGINS_VARIABLE, "glowkinds.glow")
    kinds.reload()
    yield "glow"
    kinds.reload({})
    for name in [m for m in sys.modules if m.startswith("glowkinds")]:
        sys.modules.pop(name)


def _glow_catalogue(tmp_path) -> Catalogue:
    (tmp_path / "palette.json").write_text(json.dumps(["dark", "bright"]))
    (tmp_path / "w.bin").write_bytes(b"\0")
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump({"services": {"glow": {
        "architecture": "mean_luminance", "num_classes": 2, "kind": "glow", "weights": str(tmp_path / "w.bin"),
        "options": {"palette": str(tmp_path / "palette.json")}}}}))
    return load_catalogue(str(path))


def test_a_plugin_kind_of_two_files_is_served_end_to_end(glow_kind, tmp_path, settings, sample_bytes, capsys,
                                                          monkeypatch):
    # the catalogue and the worker's table take it; its file option is confined in an S3 entry
    catalogue = _glow_catalogue(tmp_path)
    assert worker_kinds.handler_class(catalogue["glow"]).__name__ == "GlowHandler"
    entry = {"architecture": "mean_luminance", "num_classes": 2, "kind": "glow", "weights": "w.bin"}
    ok = parse_s3_entry("glow", yaml.safe_dump({**entry, "options": {"palette": "palette.json"}}), "b")
    assert ok.options["palette"] == "s3://b/models/glow/palette.json"
    with pytest.raises(CatalogueError, match=r"options\.palette '\.\./imagenet/labels\.json' must"):
        parse_s3_entry("glow", yaml.safe_dump({**entry, "options": {"palette": "../imagenet/labels.json"}}), "b")

    # the served document: its parameter and its result shape
    s = settings.replace(wait_time_s=1, heartbeat_interval_s=0.5, max_batch_wait_ms=50, reply_timeout_s=60,
                         catalogue=str(tmp_path / "services.yaml"))
    ensure_all(s, catalogue)
    app = create_app(s, catalogue)
    try:
        web = app.test_client()
        doc = web.get("/openapi.json").get_json()
        assert doc["components"]["schemas"]["Result_glow"]["required"] == ["label", "index", "score", "level"]
        level = [p for p in doc["paths"]["/classify"]["get"]["parameters"] if p.get("name") == "level"]
        assert level and level[0]["x-kind-schema"]["maximum"] == 1 and "kind glow" in level[0]["description"]

        # a request through the web, answered by a real worker thread with its result shape
        registry = ModelRegistry(catalogue, s.replace(device="cpu")).load()
        assert registry.unavailable == {}
        engine = InferenceEngine(registry, 1)
        worker = Worker(s, catalogue, registry=registry, engine=engine)
        photo = base64.b64encode(sample_bytes["chelsea"]).decode()
        with in_thread(worker):
            dark = web.post("/classify", json={"image_base64": photo, "service": "glow", "level": 0.99})
            bright = web.post("/classify?service=glow&level=0.01", json={"image_base64": photo})
            refused = web.post("/classify", json={"image_base64": photo, "service": "glow", "level": "high"})
        engine.close()
    finally:
        app.extensions["classifycloud"].close()
    assert dark.status_code == 200, dark.get_json()
    result = dark.get_json()["results"][0]
    assert result["label"] == "dark" and result["level"] == 0.99 and 0 < result["score"] < 0.99
    assert bright.get_json()["results"] == [{**result, "label": "bright", "index": 1, "level": 0.01}]
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "invalid_level"

    # the CLI reads the same catalogue: the service of the plug-in kind is listed, not refused
    monkeypatch.setenv("CLASSIFYCLOUD_CATALOGUE", str(tmp_path / "services.yaml"))
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    assert cli_main(["versions", "list", "glow"]) == 0
    assert "mean_luminance" in capsys.readouterr().out
