"""Model kinds: one table on each side (shared/kinds/, worker/models/kinds/), and a new kind is two files."""
from __future__ import annotations

import dataclasses
import sys
import textwrap

import pytest
from flask import Flask, request
from PIL import ImageStat

from classifycloud.cli import _answer_text
from shared import kinds
from shared.catalogue import CatalogueError, load_catalogue
from shared.config import Settings
from webserver.errors import ApiError
from webserver.params import request_params
from webserver.xcloud import xcloud_results
from worker.models import kinds as worker_kinds
from worker.models.engine import InferenceEngine, decode_image
from worker.models.handler import Handler
from worker.models.registry import ModelRegistry

# A toy kind, exactly as a new kind is added: its contract in shared/kinds/<name>.py and its handler in
# worker/models/kinds/<name>.py. Nothing else is written: the tables find both by their folders.
TOY_CONTRACT = '''
from shared.kinds import Kind, ParamError


class Brightness(Kind):
    name = "toy"

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


KIND = Brightness()
'''

TOY_HANDLER = '''
import torch
import torchvision.transforms.functional as TF

from worker.models.handler import Handler


class Brightness(Handler):
    kind = "toy"
    accepts_tensor = False

    def __init__(self, spec, settings, device=None):
        self.spec, self.settings, self.device = spec, settings, device
        self.labels, self.version = ["dark", "bright"], "1"

    def load(self):
        return self

    def preprocess(self, image):
        return TF.to_tensor(image.convert("L")).mean()

    def infer(self, batch):
        return torch.stack(list(batch))

    def postprocess(self, output, top_ks, params):
        levels = [(p or {}).get("level", 0.5) for p in params]
        return [[{"label": self.labels[m >= lv], "index": int(m >= lv), "score": round(m, 6)}]
                for m, lv in zip(output.tolist(), levels)]


HANDLER = Brightness
'''


def _add_module(monkeypatch, tmp_path, package, source: str):
    """Drop <package>/toy.py in (a folder on the package's path) and rebuild the package's table."""
    folder = tmp_path / package.__name__
    folder.mkdir()
    (folder / "toy.py").write_text(textwrap.dedent(source))
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.delitem(sys.modules, f"{package.__name__}.toy", raising=False)
    return package._discover()


@pytest.fixture
def toy_kind(monkeypatch, tmp_path):
    """The toy kind's two files in place; both tables rebuilt with it; gone again afterwards."""
    monkeypatch.setattr(kinds, "KINDS", _add_module(monkeypatch, tmp_path, kinds, TOY_CONTRACT))
    monkeypatch.setattr(worker_kinds, "HANDLERS", _add_module(monkeypatch, tmp_path, worker_kinds, TOY_HANDLER))
    yield "toy"
    for name in ("shared.kinds.toy", "worker.models.kinds.toy"):
        sys.modules.pop(name, None)


def _catalogue(tmp_path, kind: str):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0")
    path = tmp_path / "services.yaml"
    path.write_text(f"services:\n  glow:\n    architecture: none\n    num_classes: 2\n    kind: {kind}\n"
                    f"    weights: {weights}\n")
    return load_catalogue(str(path))


def test_the_two_tables_name_the_same_kinds_and_every_handler_follows_the_protocol():
    assert set(kinds.KINDS) == set(worker_kinds.HANDLERS) >= {"classifier", "score"}
    for name, cls in worker_kinds.HANDLERS.items():
        assert cls.kind == name
        assert all(callable(getattr(cls, m, None))
                   for m in ("for_spec", "load", "preprocess", "infer", "postprocess", "run_batch", "handle", "close"))
        assert issubclass(cls, Handler) and "run_batch" not in vars(cls)   # the base's: collate, infer, postprocess


def test_an_unknown_kind_is_refused_with_the_kinds_there_are(tmp_path):
    with pytest.raises(CatalogueError, match=r"kind must be one of classifier, .*score"):
        _catalogue(tmp_path, "toy")
    with pytest.raises(kinds.UnknownKind, match=r"unknown kind 'toy'; kinds: classifier"):
        kinds.get("toy")
    spec = load_catalogue()["imagenet"]
    odd = dataclasses.replace(spec, kind="toy")   # past the catalogue's check (say, a newer catalogue)
    with pytest.raises(worker_kinds.NoKindHandler, match=r"kind 'toy' has no handler on this worker"):
        worker_kinds.handler_class(odd)


def test_a_new_kind_is_two_files_and_is_served_from_catalogue_to_reply(toy_kind, tmp_path, sample_bytes):
    catalogue = _catalogue(tmp_path, toy_kind)  # the catalogue now takes the kind
    registry = ModelRegistry(catalogue, Settings.from_env({}, device="cpu")).load()
    assert registry.unavailable == {} and registry.get("glow").kind == "toy"
    engine = InferenceEngine(registry, decode_threads=1)
    try:
        photos = [sample_bytes["chelsea"], sample_bytes["rocket"], b"not an image"]
        out = engine.run("glow", photos, [1, 1, 1], [{"level": 0.0}, {"level": 1.0}, None])
    finally:
        engine.close()
    means = [ImageStat.Stat(decode_image(b).convert("L")).mean[0] / 255 for b in photos[:2]]
    assert [r[0]["label"] for r in out.results[:2]] == ["bright", "dark"]
    assert [r[0]["score"] for r in out.results[:2]] == pytest.approx(means, abs=0.01)
    assert out.decoders == ["pil", "pil", "error"]

    # the web side: its parameter, its XCloud shape, its CLI line
    spec = catalogue["glow"]
    app = Flask(__name__)
    with app.test_request_context("/classify?level=0.25"):
        assert request_params(request, spec) == {"level": 0.25}
    with app.test_request_context("/classify?level=high"):
        with pytest.raises(ApiError) as refused:
            request_params(request, spec)
    assert refused.value.status == 400 and refused.value.code == "invalid_level"
    assert xcloud_results(out.results[0], "toy") == [{"name": "bright", "brightness": out.results[0][0]["score"]}]
    assert _answer_text("toy", out.results[1]) == f"dark at {means[1]:.2f}"


def test_without_its_files_the_toy_kind_is_unknown_again(tmp_path):
    with pytest.raises(CatalogueError):
        _catalogue(tmp_path, "toy")
    assert "toy" not in worker_kinds.HANDLERS and "shared.kinds.toy" not in sys.modules



def test_every_catalogue_kind_has_a_worker_handler_and_a_contract():
    used = {s.kind for s in load_catalogue().services.values()}
    assert used == {"classifier", "score", "embedding"}
    assert used <= set(worker_kinds.HANDLERS) and used <= set(kinds.KINDS)
