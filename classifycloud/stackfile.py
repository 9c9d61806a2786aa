"""The local stack's state file: `up` writes where it listens; every other command finds the stack by it."""
from __future__ import annotations

import json
import logging
import os
import tempfile

log = logging.getLogger(__name__)
FILE_NAME = "stack.json"
# the moto server accepts any credentials: these dummy ones are what `up` gives its children (local.aws_env)
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
# any of these means the user chose where AWS calls go, or with which identity: the state file stays unused
_CHOSEN = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
           "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")


def state_dir(environ=None) -> str:
    """$XDG_RUNTIME_DIR/classifycloud, else $XDG_CONFIG_HOME (default ~/.config)/classifycloud."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "classifycloud")
    config = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(config, "classifycloud")


def state_path(environ=None) -> str:
    """The state file's path."""
    return os.path.join(state_dir(environ), FILE_NAME)


def write_state(endpoint: str, web_url: str, prefix: str, bucket: str, region: str) -> str:
    """Record a running stack (atomically, readable by this user only); returns the path."""
    doc = {"pid": os.getpid(), "aws_endpoint": endpoint, "web_url": web_url, "prefix": prefix, "bucket": bucket,
           "region": region}
    folder = state_dir()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".stack-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, state_path())
    return state_path()


def remove_state() -> None:
    """Remove the state file if it is this process's (a second `up` may have written its own since)."""
    doc = read_state(check_alive=False)
    if doc is not None and doc.get("pid") == os.getpid():
        try:
            os.remove(state_path())
        except FileNotFoundError:
            pass


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def read_state(check_alive: bool = True, environ=None) -> dict | None:
    """The running stack's state, or None (no file, unreadable, or its `up` is gone: a SIGKILL leaves it)."""
    try:
        with open(state_path(environ)) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not doc.get("aws_endpoint"):
        return None
    if check_alive and not _alive(doc.get("pid")):
        log.debug("stale state file %s (pid %s is gone)", state_path(environ), doc.get("pid"))
        return None
    return doc


def aws_chosen(environ=None) -> bool:
    """Whether an AWS endpoint or identity is set (variables or a shared credentials file)."""
    env = os.environ if environ is None else environ
    if any(env.get(k) for k in _CHOSEN):
        return True
    return os.path.exists(os.path.join(env.get("HOME") or os.path.expanduser("~"), ".aws", "credentials"))


def apply_state(environ=None) -> dict | None:
    """Point this process at the running local stack when nothing else is chosen; the state used, or None."""
    env = os.environ if environ is None else environ
    if aws_chosen(env):
        return None
    doc = read_state(environ=env)
    if doc is None:
        return None
    env["AWS_ENDPOINT_URL"] = doc["aws_endpoint"]
    env.update(LOCAL_CREDENTIALS)
    for var, value in (("AWS_REGION", doc.get("region")), ("AWS_DEFAULT_REGION", doc.get("region")),
                       ("CLASSIFYCLOUD_PREFIX", doc.get("prefix")), ("CLASSIFYCLOUD_BUCKET", doc.get("bucket")),
                       ("CLASSIFYCLOUD_URL", doc.get("web_url"))):
        if value and not env.get(var):
            env[var] = value
    return doc
