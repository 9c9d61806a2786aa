"""`classifycloud` command line: up | web | worker | autoscaler | simulate | convert | train | metrics | provision | batch."""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import threading
import time

import requests

from classifycloud import stackfile
from shared import kinds, logsafe
from shared.config import Settings

log = logging.getLogger("classifycloud")

USAGE = """classifycloud <command> [options]

commands:
  up          the embedded stack on this machine: moto server, web, workers, autoscaler
  web         the web front end under gunicorn (N processes, one reply queue each)
  worker      a worker: polls the request queues, classifies, replies
  autoscaler  the autoscaler loop (queue depth -> fleet size)
  simulate    replay traces through the scaling policies (no AWS)
  convert     export a service's model to ONNX / TensorRT
  train       fine-tune a service on an ImageFolder (folder or s3://) and publish it live
  metrics     review CloudWatch metrics and result records: table, plots, HTML report
  provision   create the queues, bucket and tables at the configured AWS endpoint
  keys        API keys: create | list | revoke (stored as hashes in DynamoDB)
  usage       the usage log: per-key / per-service calls, errors, latency; --csv FILE
  dlq         list | redrive dead-lettered requests
  batch       submit a batch (S3 prefix, manifest or list) and follow it; --follow ID; --cancel ID
  versions    list | set-weights | promote | rollback | shadow | pinning | bounds of a service's versions
"""


def _delegate(module: str, func: str = "main"):
    def run(argv: list[str]) -> int:
        mod = importlib.import_module(module)
        return int(getattr(mod, func)(argv) or 0)
    return run


def cmd_web(argv: list[str]) -> int:
    """Serve webserver.wsgi:app with gunicorn; every gunicorn setting but these flags is in gunicorn_conf.py."""
    from webserver.serve import gunicorn_command
    settings = Settings.from_env()
    p = argparse.ArgumentParser(prog="classifycloud web")
    p.add_argument("--processes", "-w", type=int, default=settings.web_processes)
    p.add_argument("--threads", type=int, default=None, help="threads per process (default: gunicorn_conf.py)")
    p.add_argument("--host", default=settings.web_host)
    p.add_argument("--port", type=int, default=settings.web_port)
    args = p.parse_args(argv)
    gargs = gunicorn_command(settings, args.processes, args.host, args.port, threads=args.threads)
    os.execv(gargs[0], gargs)
    return 0  # not reached


def cmd_provision(argv: list[str]) -> int:
    """Create the request queues (with DLQs), the terminate queue and the bucket."""
    from classifycloud.provision import ensure_all
    from shared.catalogue import catalogue_for
    argparse.ArgumentParser(prog="classifycloud provision").parse_args(argv)
    settings = Settings.from_env()
    for name, url in ensure_all(settings, catalogue_for(settings)).items():
        print(f"{name:12s} {url}")
    print(f"bucket       {settings.bucket_name}")
    from webserver import keys, usage
    print(f"tables       {keys.table_name(settings)}, {usage.table_name(settings)}")
    return 0


def _timed(request, label: str, out=print):
    """(response, JSON body, ms) of one request(); None after printing why it failed."""
    t0 = time.perf_counter()
    try:
        r = request()
        body = r.json()
    except (requests.RequestException, ValueError) as exc:
        out(f"{label} request failed: {exc}")
        return None
    return r, body, (time.perf_counter() - t0) * 1000


def _classify_samples(stack, out=print) -> bool:
    """Classify each bundled photo once through the public API; print a table. True if all succeeded."""
    from classifycloud.local import SAMPLES
    ok = True
    out(f"\n{'photo':10s} {'top-1':28s} {'score':>6s} {'class':>5s} {'ms':>6s}")
    for name in SAMPLES:
        done = _timed(lambda name=name: requests.get(stack.base_url + "/classify",
                                                     params={"url": stack.sample_url(name)}, timeout=180),
                      f"{name:10s}", out)
        if done is None:
            ok = False
            continue
        r, body, ms = done
        if r.status_code != 200 or not body.get("results"):
            out(f"{name:10s} HTTP {r.status_code}: {body.get('error')}")
            ok = False
            continue
        top = body["results"][0]
        out(f"{name:10s} {top['label'][:28]:28s} {top['score']:6.3f} {top['index']:5d} {ms:6.0f}")
    return ok


# One bundled photo per service for `up`'s second table (the samples are everyday photos: the answers of
# skin and pdr on them show the service works end to end, not a diagnosis).
SERVICE_SAMPLES = {"nsfw": "astronaut", "skin": "coffee", "pdr": "chelsea", "facesearch": "astronaut",
                   "food": "coffee", "insect": "chelsea"}
SAMPLE_GALLERY = "samples"


def _answer_text(kind: str, results: list) -> str:
    """One line for a reply's results, by service kind (shared/kinds/)."""
    return kinds.get(kind).summary(results)


def _hosted(svc: dict) -> bool:
    """Whether a ready worker serves `svc`, per /services' serving_backends (from the workers' heartbeats)."""
    return bool(svc.get("serving_backends"))


def _service_samples(stack, out=print) -> bool:
    """One request per available service through /classify (facesearch: enrol, then search); True if all ok."""
    try:
        services = requests.get(stack.base_url + "/services", timeout=30).json()["services"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        out(f"/services failed: {exc}")
        return False
    ok = True
    out(f"\n{'service':11s} {'kind':10s} {'photo':10s} {'answer':44s} {'ms':>6s}")
    for svc in services:
        name, photo = svc["name"], SERVICE_SAMPLES.get(svc["name"], "chelsea")
        if not svc["available"] or name == "imagenet":
            continue
        if not _hosted(svc):   # e.g. CLASSIFYCLOUD_SERVICES=imagenet: its request would wait 180 s
            out(f"{name:11s} {svc['kind']:10s} {'-':10s} not hosted by a running worker")
            continue
        params = {"url": stack.sample_url(photo), "service": name}

        def request(kind=svc["kind"], params=params, photo=photo):
            if kinds.get(kind).enrols_faces:
                r = requests.post(f"{stack.base_url}/faces/{SAMPLE_GALLERY}", timeout=180,
                                  data={"url": stack.sample_url(photo), "name": photo})
                if r.status_code != 201:
                    raise ValueError(f"enrol: HTTP {r.status_code} {r.text[:120]}")
                params["gallery"] = SAMPLE_GALLERY
            return requests.get(stack.base_url + "/classify", params=params, timeout=180)

        done = _timed(request, f"{name:11s}", out)
        if done is None:
            ok = False
            continue
        r, body, ms = done
        if r.status_code != 200:
            out(f"{name:11s} HTTP {r.status_code}: {body.get('error')}")
            ok = False
            continue
        out(f"{name:11s} {svc['kind']:10s} {photo:10s} {_answer_text(svc['kind'], body['results'])[:44]:44s} {ms:6.0f}")
    return ok


def up_stack(argv: list[str]):
    """The arguments of `classifycloud up` and the (not yet started) LocalStack they describe."""
    from classifycloud.local import LocalStack
    p = argparse.ArgumentParser(prog="classifycloud up", description=cmd_up.__doc__)
    p.add_argument("--port", type=int, default=8080, help="web port (0 = any free port)")
    p.add_argument("--web-processes", type=int, default=2)
    p.add_argument("--workers", type=int, default=None,
                   help="a fixed number of workers (0 allowed) instead of the autoscaler")
    p.add_argument("--min-workers", type=int, default=None)
    p.add_argument("--max-workers", type=int, default=None)
    p.add_argument("--once", action="store_true", help="classify the samples, then stop (for CI)")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be 0 or more")
    overrides = {"metrics_enabled": Settings.from_env().metrics_enabled}
    if args.min_workers is not None:
        overrides["min_workers"] = args.min_workers
    if args.max_workers is not None:
        overrides["max_workers"] = args.max_workers
    settings = Settings.from_env(**overrides)
    autoscale = args.workers is None and importlib.util.find_spec("autoscaler.local") is not None
    workers = 1 if args.workers is None else args.workers
    return args, LocalStack(settings, web_port=args.port, web_processes=args.web_processes,
                            workers=workers, autoscale=autoscale)


def cmd_up(argv: list[str]) -> int:
    """Run the whole system on this machine until Ctrl-C."""
    args, stack = up_stack(argv)
    settings, autoscale = stack.settings, stack.autoscale
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("starting ClassifyCloud locally: moto server, queues, web, "
          + (f"autoscaled workers ({settings.min_workers}..{settings.max_workers})" if autoscale
             else f"{stack.workers} worker(s)"), flush=True)
    try:
        stack.start()
        from shared.aws import region as aws_region
        state = stackfile.write_state(stack.endpoint, stack.base_url, settings.prefix, stack.settings.bucket_name,
                                      aws_region(stack.settings))
        print(f"logs: {stack.log_dir}\nstate: {state} (other terminals' commands find the stack by it)", flush=True)
        stack.wait_ready(progress=lambda m: print("  " + m, flush=True))
        print(f"\nClassifyCloud is up at {stack.base_url}   (AWS endpoint {stack.endpoint})")
        print("try:\n  curl '%s/classify?url=%s'" % (stack.base_url, stack.sample_url("chelsea")))
        print("  curl -F image=@%s/chelsea.jpg %s/classify" % (_samples_path(), stack.base_url))
        ok = _run_demo(stack, stop)
        if stop.is_set():   # Ctrl-C during the demo: stop now, not after its requests' timeouts
            return 0
        if args.once:
            return 0 if ok else 1
        print("\nCtrl-C stops everything.", flush=True)
        stop.wait()
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        stackfile.remove_state()
        stack.stop()
        print("stopped.", flush=True)


def _run_demo(stack, stop: threading.Event) -> bool:
    """Both sample tables, in a thread the main thread leaves as soon as `stop` is set; True if all answered."""
    result = []

    def demo():
        ok = _classify_samples(stack)
        result.append(_service_samples(stack) and ok)

    thread = threading.Thread(target=demo, name="samples", daemon=True)
    thread.start()
    while thread.is_alive() and not stop.is_set():
        thread.join(0.2)
    return bool(result and result[0])


def _samples_path() -> str:
    from classifycloud.local import samples_dir
    return samples_dir()


COMMANDS = {
    "up": cmd_up,
    "web": cmd_web,
    "worker": _delegate("worker.__main__"),
    "autoscaler": _delegate("autoscaler.__main__"),
    "simulate": _delegate("autoscaler.__main__", "simulate_main"),
    "convert": _delegate("classifycloud.convert"),
    "train": _delegate("classifycloud.train"),
    "metrics": _delegate("classifycloud.review"),
    "provision": cmd_provision,
    "keys": _delegate("classifycloud.keyadmin"),
    "usage": _delegate("classifycloud.usage_report"),
    "dlq": _delegate("classifycloud.dlq"),
    "batch": _delegate("classifycloud.batch"),
    "versions": _delegate("classifycloud.versions_cli"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `classifycloud` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] not in COMMANDS:
        print(f"classifycloud: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    level = os.environ.get("CLASSIFYCLOUD_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logsafe.install()   # client strings never start a forged log line
    # the embedded moto server logs every AWS call through werkzeug; keep the terminal for the user
    for noisy in ("werkzeug", "botocore.credentials", "botocore.configprovider"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return _run(argv[0], argv[1:])


# commands that need no AWS (up starts its own endpoint), and the one that talks to the web API only
NO_AWS = {"up", "simulate", "convert"}
WEB_ONLY = {"batch"}
HOW_TO_SET = {"aws": "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a "
                      "local endpoint)",
              "web": "pass --url or set CLASSIFYCLOUD_URL"}

_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "NoCredentialsError", "PartialCredentialsError"}
_REFUSED_IDENTITY = {"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
                     "InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthFailure"}


def _missing(command: str, what: str, how: str = "aws") -> int:
    """The one line a command prints when the stack or credentials are missing; exit status 2."""
    print(f"classifycloud {command}: {what}; start `classifycloud up` in another terminal (it writes "
          f"{stackfile.state_path()}), or {HOW_TO_SET[how]}", file=sys.stderr)
    return 2


def _run(command: str, argv: list[str]) -> int:
    """Find the local stack when nothing else is set, then run the command; AWS and connection failures: one line."""
    import botocore.exceptions as bx

    from shared.transport import TransportError
    if command in NO_AWS or any(a in ("-h", "--help") for a in argv):
        return COMMANDS[command](argv)
    stackfile.apply_state()
    if command in WEB_ONLY:
        if not os.environ.get("CLASSIFYCLOUD_URL") and not any(a.startswith("--url") for a in argv):
            return _missing(command, "no local stack found and neither --url nor CLASSIFYCLOUD_URL is set", "web")
    else:
        from shared.aws import session
        try:
            if session().get_credentials() is None:
                return _missing(command, "no AWS credentials found")
        except bx.BotoCoreError as exc:   # a broken profile or credentials file
            return _missing(command, f"the AWS credentials cannot be read ({exc})")
    try:
        return COMMANDS[command](argv)
    except (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError) as exc:
        return _missing(command, f"no usable AWS credentials ({exc})")
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as exc:
        return _missing(command, f"the AWS endpoint does not answer ({exc})")
    except TransportError as exc:   # SQS calls arrive wrapped (shared/transport.py); their code names the cause
        if exc.code not in _UNREACHABLE:
            raise
        return _missing(command, f"the AWS endpoint does not answer ({exc})")
    except bx.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in _REFUSED_IDENTITY:
            raise
        return _missing(command, f"AWS refused the credentials ({exc})")
    except bx.NoRegionError:
        return _missing(command, "no AWS region is set (AWS_REGION)")
    except requests.ConnectionError as exc:
        return _missing(command, f"the ClassifyCloud web does not answer ({exc.request.url if exc.request else exc})",
                        "web")


if __name__ == "__main__":
    sys.exit(main())
