"""The LICENSE file matches the licence setup.cfg declares."""
from __future__ import annotations

import configparser
import os

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_license_file_is_the_mit_text_setup_cfg_declares():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["metadata"]["license"] == "MIT"
    assert cfg["metadata"]["license_files"].strip() == "LICENSE"
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as fh:
        text = fh.read()
    assert text.startswith("MIT License")
    assert "Copyright (c)" in text and "ClassifyCloud developers" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
