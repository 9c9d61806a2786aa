"""Log lines that a client cannot forge: control characters in logged values are escaped, never written raw.

Client strings (S3 keys, URLs, names, error texts that quote them) reach the logs as %-args. A key
holding CR/LF would otherwise start a forged log line. install() sets a log-record factory that escapes
C0/C1 control characters and the Unicode line separators in every argument (\\x0a, \\u2028), in every
logger of the process, whatever the handlers. Numbers keep their type, so %d and %.1f still work.
"""
from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_installed = False


def escape(text: str) -> str:
    """The text with each control character written as its escape (\\x0a, \\u2028)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _clean(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:      # a value whose str() fails: logging reports it as it always did
        return value
    return escape(text) if _CONTROL.search(text) else value


def _clean_mapping(args: dict) -> dict:
    """args with escaped values, of the same class: a subclass keeps its own lookups (gunicorn's access-log
    atoms answer '-' for a header the request lacks; a plain dict raised KeyError on every such line)."""
    cleaned = {k: _clean(v) for k, v in args.items()}
    if type(args) is dict:
        return cleaned
    out = type(args).__new__(type(args))   # not __init__: a subclass's may transform the values again
    dict.update(out, cleaned)
    return out


def install() -> None:
    """Escape control characters in every log record's arguments, from now on, in this process (idempotent)."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = _clean_mapping(record.args)
        return record
    logging.setLogRecordFactory(factory)
    _installed = True
