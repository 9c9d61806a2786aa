"""`classifycloud batch`: submit a batch (S3 prefix, manifest or list), follow it with a progress bar, cancel it."""
from __future__ import annotations

import argparse
import os
import sys
import time

import requests

FINAL = ("succeeded", "failed", "cancelled")


class ApiCallError(Exception):
    """The web answered an error (its code and message) or could not be reached."""


class BatchClient:
    """The /batches routes over HTTP, with an API key when one is given."""

    def __init__(self, base_url: str, key: str | None = None, timeout_s: float = 30.0):
        self.base = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, **kw) -> dict:
        try:
            r = requests.request(method, self.base + path, headers=self.headers, timeout=self.timeout_s, **kw)
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            raise ApiCallError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if r.status_code >= 400:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise ApiCallError(f"HTTP {r.status_code} {err.get('code', '')}: {err.get('message', r.text[:200])}")
        return body

    def submit(self, doc: dict) -> dict:
        """POST /batches."""
        return self._call("POST", "/batches", json=doc)

    def status(self, batch_id: str) -> dict:
        """GET /batches/<id>."""
        return self._call("GET", f"/batches/{batch_id}")

    def cancel(self, batch_id: str) -> dict:
        """DELETE /batches/<id>."""
        return self._call("DELETE", f"/batches/{batch_id}")


def progress_line(b: dict, width: int = 30) -> str:
    """[#####.....]  512/1000 (3 failed)  25.1 items/s  ETA 19 s  running"""
    total, done = b.get("total"), b.get("done", 0)
    if not total:
        return f"[{'.' * width}]  {done}/?  {b.get('state')}"
    filled = int(width * done / total)
    eta = b.get("eta_s")
    eta_text = "" if eta is None else f"  ETA {eta:.0f} s"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done:>6}/{total} ({b.get('failed', 0)} failed)"
            f"  {b.get('rate') or 0:.1f} items/s{eta_text}  {b.get('state')}")


def follow(client: BatchClient, batch_id: str, interval_s: float = 1.0, out=sys.stdout, timeout_s: float = 0) -> dict:
    """Poll until the batch is final, drawing the progress bar (one line per change when not a terminal)."""
    tty = getattr(out, "isatty", lambda: False)()
    last, started = "", time.monotonic()
    while True:
        try:
            b = client.status(batch_id)
        except ApiCallError as exc:      # a web restart: keep following
            print(f"\n(status unavailable: {exc}; retrying)", file=out, flush=True)
            time.sleep(interval_s)
            continue
        line = progress_line(b)
        if line != last:
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)
            last = line
        if b.get("state") in FINAL:
            if tty:
                print(file=out)
            return b
        if timeout_s and time.monotonic() - started > timeout_s:
            raise TimeoutError(f"batch {batch_id} not finished after {timeout_s:g} s")
        time.sleep(interval_s)


def build_request(args) -> dict:
    """The POST /batches body from the command line."""
    if args.prefix:
        source = {"s3_prefix": args.prefix}
    elif args.manifest:
        source = {"manifest": args.manifest}
    else:
        items = list(args.items)
        if args.items_file:
            with (sys.stdin if args.items_file == "-" else open(args.items_file, encoding="utf-8")) as fh:
                items += [line.strip() for line in fh if line.strip()]
        source = {"items": items}
    doc = {"service": args.service, "input": source, "output": args.output}
    notify = {k: v for k, v in (("webhook", args.webhook), ("success_topic", args.success_topic),
                                ("error_topic", args.error_topic)) if v}
    if notify:
        doc["notify"] = notify
    if args.deadline:
        doc["deadline"] = int(args.deadline) if args.deadline.isdigit() else args.deadline
    if args.top_k:
        doc["top_k"] = args.top_k
    return doc


def main(argv: list[str] | None = None) -> int:
    """Submit a batch and follow it; or --follow ID; or --cancel ID. Exit 0 when the batch succeeded."""
    p = argparse.ArgumentParser(prog="classifycloud batch", description=main.__doc__)
    p.add_argument("items", nargs="*", help="image URLs or s3:// URIs (an inline list)")
    p.add_argument("--url", default=os.environ.get("CLASSIFYCLOUD_URL", "http://127.0.0.1:8080"), help="the web API")
    p.add_argument("--key", default=os.environ.get("CLASSIFYCLOUD_API_KEY"), help="API key (or $CLASSIFYCLOUD_API_KEY)")
    p.add_argument("--service", default="imagenet")
    p.add_argument("--prefix", help="s3:// prefix: every image under it")
    p.add_argument("--manifest", help="s3:// JSON Lines manifest of URLs or s3:// URIs")
    p.add_argument("--items-file", help="a file of URLs / s3:// URIs, one a line ('-': stdin)")
    p.add_argument("--output", help="s3:// prefix for the JSON Lines shards")
    p.add_argument("--webhook", help="HTTPS URL notified when done (signed)")
    p.add_argument("--success-topic", help="SNS topic ARN for success")
    p.add_argument("--error-topic", help="SNS topic ARN for errors")
    p.add_argument("--deadline", help="finish by: RFC 3339 time or epoch seconds")
    p.add_argument("--top-k", type=int)
    p.add_argument("--follow", metavar="ID", help="follow a running batch")
    p.add_argument("--cancel", metavar="ID", help="cancel a batch (owner key only)")
    p.add_argument("--no-wait", action="store_true", help="print the id and return without following")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between progress polls")
    args = p.parse_args(argv)
    client = BatchClient(args.url, args.key)
    try:
        if args.cancel:
            print(f"{args.cancel}: {client.cancel(args.cancel)['state']}")
            return 0
        batch_id = args.follow
        if batch_id is None:
            sources = sum(bool(x) for x in (args.prefix, args.manifest, args.items or args.items_file))
            if sources != 1 or not args.output:
                p.error("give --output and exactly one of --prefix, --manifest, items / --items-file")
            accepted = client.submit(build_request(args))
            batch_id = accepted["id"]
            print(f"batch {batch_id} accepted: {accepted['status_url']}", flush=True)
            if args.no_wait:
                return 0
        final = follow(client, batch_id, args.interval)
    except ApiCallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for shard in final.get("shards", []):
        print(shard)
    if final.get("error"):
        print(f"error: {final['error'].get('code')}: {final['error'].get('message')}", file=sys.stderr)
    return 0 if final["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
