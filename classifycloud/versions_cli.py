"""`classifycloud versions`: list a service's versions and change its traffic live (no restart).

  list [SERVICE]                          versions, weights, shadow, rollbacks, outcomes since the last change
  set-weights SERVICE v1=90 v2=10         the traffic split (sticky per request id)
  promote SERVICE VERSION                 all traffic to VERSION, which becomes live
  rollback SERVICE [--reason TEXT]        canaries to 0; with none, back to the previous live version
  shadow SERVICE VERSION --share 0.5      a sampled copy of the traffic to VERSION (--off clears it)
  pinning SERVICE on|off|any              may clients send service=SERVICE@VERSION (any: also idle versions)
  bounds SERVICE [--max-error-rate R] [--max-p95-ms MS] [--min-requests N]   the automatic rollback's bounds

Writes s3://<bucket>/models/<SERVICE>/traffic.json; the web routes by it within catalogue_ttl_s.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from shared.catalogue import catalogue_for
from shared.config import Settings
from shared.traffic import TrafficStore
from shared.version_entries import VersionEntries
from shared.versions import Bounds, TrafficPolicy, VersionError, stats_since


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="classifycloud versions", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="versions and traffic of one service or all")
    ls.add_argument("service", nargs="?")
    sw = sub.add_parser("set-weights", help="the traffic split, e.g. v1=90 v2=10")
    sw.add_argument("service")
    sw.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    pr = sub.add_parser("promote", help="all traffic to a version, which becomes live")
    pr.add_argument("service")
    pr.add_argument("version")
    rb = sub.add_parser("rollback", help="canaries to 0, or back to the previous live version")
    rb.add_argument("service")
    rb.add_argument("--reason", default="operator rollback")
    sh = sub.add_parser("shadow", help="a sampled copy of the traffic to a version")
    sh.add_argument("service")
    sh.add_argument("version", nargs="?")
    sh.add_argument("--share", type=float, default=1.0)
    sh.add_argument("--off", action="store_true")
    pn = sub.add_parser("pinning", help="allow or refuse service@version from clients")
    pn.add_argument("service")
    pn.add_argument("state", choices=("on", "off", "any"),
                    help="on: versions with traffic; any: also those without (weight 0, rolled back)")
    bd = sub.add_parser("bounds", help="the automatic rollback's bounds")
    bd.add_argument("service")
    bd.add_argument("--max-error-rate", type=float)
    bd.add_argument("--max-p95-ms", type=float)
    bd.add_argument("--min-requests", type=int)
    return p


def _weights(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        version, sep, weight = item.partition("=")
        if not sep:
            raise VersionError("invalid_weights", f"{item!r}: expected VERSION=WEIGHT")
        try:
            out[version] = float(weight)
        except ValueError:
            raise VersionError("invalid_weights", f"{item!r}: the weight is not a number") from None
    return out


class VersionsCommand:
    """The subcommands over one stack's bucket."""

    def __init__(self, settings: Settings, s3=None, out=print):
        from shared.aws import client
        self.settings = settings
        self.s3 = s3 or client("s3", settings)
        self.catalogue = catalogue_for(settings)
        self.store = TrafficStore(settings, self.s3)
        self.entries = VersionEntries(settings, self.s3)
        self.out = out

    def known(self, service: str) -> dict:
        """The service's versions ({version: VersionEntry}); VersionError for an unknown service."""
        if service not in self.catalogue:
            raise VersionError("unknown_service", f"no packaged service named {service!r}")
        return self.entries.read(self.catalogue, service).get(service, {})

    def _check(self, service: str, versions) -> None:
        known = self.known(service)
        for v in versions:
            if v not in known:
                raise VersionError("unknown_version", f"service {service!r} has no version {v!r}; "
                                                      f"known: {', '.join(sorted(known))}")
            if known[v].spec is None:
                raise VersionError("unknown_version", f"{service}@{v}: its S3 entry is invalid: {known[v].error}")

    def change(self, service: str, how) -> TrafficPolicy:
        """Read, change, write and print the policy."""
        policy, _ = self.store.read(service)
        policy = how(policy, int(time.time() * 1000))
        self.store.write(policy)
        self.out(policy.to_json())
        return policy

    def run(self, args) -> None:
        """Dispatch one parsed command."""
        s = args.service
        if args.cmd == "list":
            return self.list(s)
        if args.cmd == "set-weights":
            weights = _weights(args.weights)
            self._check(s, weights)
            self.change(s, lambda p, now: p.with_weights(weights, now))
        elif args.cmd == "promote":
            self._check(s, [args.version])
            self.change(s, lambda p, now: p.promote(args.version, now))
        elif args.cmd == "rollback":
            self.change(s, lambda p, now: p.rollback(args.reason, now))
        elif args.cmd == "shadow":
            if not args.off:
                if not args.version:
                    raise VersionError("invalid_version", "name the shadow version, or --off")
                self._check(s, [args.version])
            self.change(s, lambda p, now: p.with_shadow(None if args.off else args.version, args.share, now))
        elif args.cmd == "pinning":
            self.change(s, lambda p, now: replace(p, pinning=args.state != "off", pin_idle=args.state == "any"))
        elif args.cmd == "bounds":
            def bounds(p: TrafficPolicy, now: int) -> TrafficPolicy:
                b = p.bounds
                return replace(p, bounds=Bounds(
                    args.max_error_rate if args.max_error_rate is not None else b.max_error_rate,
                    args.max_p95_ms if args.max_p95_ms is not None else b.max_p95_ms,
                    args.min_requests if args.min_requests is not None else b.min_requests))
            self.change(s, bounds)

    def list(self, service: str | None) -> None:
        """One block per service that has versions or a policy."""
        from autoscaler.versions import read_outcomes
        outcomes = read_outcomes(self.settings, self.s3, time.time())
        stored = set(self.store.stored_services())
        names = [service] if service else [n for n in self.catalogue.names()
                                           if n in stored or n in self.catalogue.versions]
        for name in names:
            policy, has = self.store.read(name)
            stats = stats_since(outcomes.get(name, []), policy.since)
            self.out(f"{name}: live {policy.live}{'' if has else ' (no traffic.json: all traffic to v1)'}; "
                     f"pinning {'on' if policy.pinning else 'off'}; bounds error rate <= "
                     f"{policy.bounds.max_error_rate:g}, p95 <= {policy.bounds.max_p95_ms:g} ms "
                     f"over >= {policy.bounds.min_requests} requests")
            self.out(f"  {'version':8s} {'origin':9s} {'weight':>7s} {'share':>6s} {'requests':>8s} {'errors':>6s} "
                     f"{'p95 ms':>7s}  architecture / note")
            for v, entry in sorted(self.known(name).items()):
                st = stats.get(v)
                note = entry.spec.architecture if entry.spec else f"INVALID: {entry.error}"
                if v == policy.shadow:
                    note += f"; shadow of {policy.shadow_share:.0%} of the traffic"
                if v in policy.rolled_back:
                    rb = policy.rolled_back[v]
                    note += f"; rolled back by {rb.get('by')}: {rb.get('reason')}"
                share = policy.share(v) if policy.weights.get(v, 0) > 0 else 0.0
                self.out(f"  {v:8s} {entry.origin:9s} {policy.weights.get(v, 0.0):7g} {share:6.1%} "
                         f"{st.requests if st else 0:8d} {st.errors if st else 0:6d} "
                         f"{(st.p95_ms if st and st.p95_ms is not None else float('nan')):7.0f}  {note}")


def main(argv: list[str] | None = None) -> int:
    """0 done, 1 refused (unknown version, invalid weights), 2 bad arguments."""
    args = _parser().parse_args(argv)
    try:
        VersionsCommand(Settings.from_env()).run(args)
    except VersionError as exc:
        print(f"classifycloud versions: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
