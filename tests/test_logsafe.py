"""Log-record arguments are escaped, and a mapping of arguments keeps its own class (gunicorn's access log)."""
from __future__ import annotations

import io
import logging

from gunicorn.glogging import SafeAtoms

from shared import logsafe


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(name)
    logger.handlers[:] = [logging.StreamHandler(out)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_an_access_line_without_x_forwarded_for_is_written_with_a_dash_not_a_logging_error(capsys):
    from webserver.gunicorn_conf import access_log_format
    logsafe.install()
    logger, out = _logger("test.logsafe.access")
    atoms = SafeAtoms({"h": "127.0.0.1", "t": "[08/Dec/2026:02:13:28 +0000]", "m": "GET", "U": "/classify",
                       "H": "HTTP/1.1", "s": "200", "b": "224", "M": 12, "a": "curl/8\r\nforged: yes"})
    logger.info(access_log_format, atoms)
    line = out.getvalue()
    assert line.startswith('127.0.0.1 xff=- [08/Dec/2026:02:13:28 +0000] "GET /classify HTTP/1.1" 200 224 12ms')
    assert "\\r\\nforged" in line and line.count("\n") == 1
    assert "Logging error" not in capsys.readouterr().err


def test_plain_mapping_and_tuple_arguments_are_escaped():
    logsafe.install()
    logger, out = _logger("test.logsafe.plain")
    logger.info("key %(key)s", {"key": "a\nb"})
    logger.info("key %s n %d", "c\nd", 7)
    assert out.getvalue().splitlines() == ["key a\\nb", "key c\\nd n 7"]
