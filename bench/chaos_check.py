"""The chaos soak's invariant checker: a pure function of the run's log (no stack), so a test can feed it.

The log (bench/chaos.py writes it):
  sync     [{key, photo, status, code, id, answer_id, label, err, final}]  status None: no HTTP answer (err says
           why); final: the record GET /jobs/<id> gave at the end for an error that carried an id, else None
  jobs     [{key, photo, status, id, final, notify}]   status: the POST's HTTP status; final: the polled record
  batches  [{id, total, state, lines: [{index, status, label_index}], notify}]   photos: index -> photo
  notices  {id: notify/done record or None}             received: [{key, id, event}] at the webhook receiver
"""
from __future__ import annotations

import collections
import json
import sys

REFUSED = ("queue_unavailable", "storage_unavailable")   # clean 503s at submit: nothing accepted, the client retries
PENDING = ("timeout", "shutting_down")   # the web gave up waiting (504) or stopped (503): the id must resolve later
TERMINAL_BATCH = ("succeeded", "failed", "cancelled")
FACE = "Eileen Collins"


def label_ok(photo: str, label_index, label) -> bool:
    """Does the top answer fit the photo (cats 281-285 for chelsea, espresso 967 for coffee, the enrolled face)?"""
    if photo == "chelsea":
        return label_index in range(281, 286)
    if photo == "coffee":
        return label_index == 967
    if photo == "face":
        return label == FACE
    return True


def _refused_at_door(err: str) -> bool:
    """A connection that was refused never reached the web: nothing was accepted, the client retries."""
    return "Connection refused" in err or "NewConnectionError" in err


def _terminal(record) -> bool:
    return isinstance(record, dict) and record.get("status") in ("ok", "error")


def check(log: dict) -> dict:
    """Counts per invariant ({checked, violations, examples}) and the total of violations."""
    inv = {name: {"checked": 0, "violations": 0, "examples": []} for name in
           ("sync_answered", "terminal", "batch_lines", "notices", "right_client")}
    other = collections.Counter()

    def tally(name: str, ok: bool, what: str) -> None:
        inv[name]["checked"] += 1
        if not ok:
            inv[name]["violations"] += 1
            if len(inv[name]["examples"]) < 10:
                inv[name]["examples"].append(what)

    def polled(who: str, rid: str, photo: str, final: dict) -> None:
        """A record read from GET /jobs/<rid>: it must be rid's, and its top answer must fit the photo."""
        tally("right_client", final.get("id") == rid, f"{who}: polled {rid}, got {final.get('id')}")
        if final.get("status") == "ok":
            top = (final.get("results") or [{}])[0]
            tally("right_client", label_ok(photo, top.get("index"), top.get("label")),
                  f"{who}: {photo} answered {top.get('label')!r}")

    answer_owner: dict[str, str] = {}
    for r in log.get("sync", []):
        key = r["key"]
        if r.get("status") == 200:
            tally("sync_answered", True, key)
            tally("right_client", label_ok(r["photo"], r.get("label_index"), r.get("label")),
                  f"{key}: {r['photo']} answered {r.get('label')!r} ({r.get('label_index')})")
            aid = r.get("answer_id")
            if aid:
                tally("right_client", answer_owner.setdefault(aid, key) == key,
                      f"{key}: answer id {aid} also answered {answer_owner.get(aid)}")
        elif r.get("status") is None:
            err = r.get("err") or ""
            if _refused_at_door(err):
                other["sync refused at the door"] += 1
            elif r.get("web_killed"):   # the web was SIGKILLed while this request was in it
                other["sync cut by a web SIGKILL"] += 1
            else:
                tally("sync_answered", False, f"{key}: no answer ({err[:80]})")
        elif r.get("code") in REFUSED:
            other["sync refused (503, nothing accepted)"] += 1
        elif r.get("id") and r.get("code") not in PENDING:   # a worker's error reply (inference_failed, fetch_...)
            tally("sync_answered", True, key)
            other[f"sync answered with an error reply: {r['status']} {r.get('code')}"] += 1
        elif r.get("id"):
            final = r.get("final")
            tally("sync_answered", _terminal(final), f"{key}: {r['status']} {r.get('code')} id {r['id']} never resolved")
            if _terminal(final):
                polled(key, r["id"], r["photo"], final)
        else:
            tally("sync_answered", False, f"{key}: {r['status']} {r.get('code')} without a job id")

    for j in log.get("jobs", []):
        if j.get("status") != 202:
            if j.get("code") in REFUSED or _refused_at_door(j.get("err") or "") or j.get("web_killed"):
                other["job not accepted (clean refusal)"] += 1
            else:
                tally("terminal", False, f"{j['key']}: POST /jobs {j.get('status')} {j.get('code') or j.get('err')}")
            continue
        final = j.get("final")
        tally("terminal", _terminal(final), f"job {j['id']} ({j['key']}) not terminal")
        if _terminal(final):
            polled(j["key"], j["id"], j["photo"], final)

    for b in log.get("batches", []):
        tally("terminal", b.get("state") in TERMINAL_BATCH, f"batch {b['id']} ended {b.get('state')}")
        indices = collections.Counter(x["index"] for x in b.get("lines", []))
        missing = [i for i in range(b["total"]) if indices[i] == 0]
        doubled = [i for i, c in indices.items() if c > 1]
        extra = [i for i in indices if not 0 <= i < b["total"]]
        tally("batch_lines", not (missing or doubled or extra),
              f"batch {b['id']}: {len(b.get('lines', []))} lines for {b['total']} inputs; missing {missing[:5]}, "
              f"doubled {doubled[:5]}, out of range {extra[:5]}")
        photos = b.get("photos") or {}
        for x in b.get("lines", []):
            if x.get("status") == "ok" and str(x["index"]) in photos:
                tally("right_client", label_ok(photos[str(x["index"])], x.get("label_index"), None),
                      f"batch {b['id']} line {x['index']}: answered {x.get('label_index')}")

    notices = log.get("notices", {})
    received = collections.defaultdict(set)
    for g in log.get("received", []):
        received[g.get("key")].add(g.get("id"))
        other["webhook posts"] += 1
    wanted = [(j["id"], j["key"]) for j in log.get("jobs", []) if j.get("status") == 202 and j.get("notify")]
    wanted += [(b["id"], b.get("key")) for b in log.get("batches", []) if b.get("notify")]
    for nid, key in wanted:
        doc = notices.get(nid)
        state = (doc or {}).get("state")
        tally("notices", state in ("delivered", "failed"), f"notice {nid}: {state or 'no notify/done record'}")
        if state == "delivered":
            tally("notices", nid in received.get(key, set()), f"notice {nid}: recorded delivered, never received")
    owners = {j["key"]: j.get("id") for j in log.get("jobs", [])}
    owners.update({b.get("key"): b["id"] for b in log.get("batches", [])})
    for g in log.get("received", []):   # every notice the receiver got names what that client asked about
        tally("right_client", owners.get(g.get("key")) == g.get("id"),
              f"webhook {g.get('key')} got a notice for {g.get('id')}")
    return {"violations": sum(v["violations"] for v in inv.values()), "invariants": inv, "other": dict(other)}


if __name__ == "__main__":   # re-judge a run's chaos-log.json: python bench/chaos_check.py <log>
    print(json.dumps(check(json.load(open(sys.argv[1]))), indent=1))
