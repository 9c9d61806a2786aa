"""`python -m worker` / `classifycloud worker`: run one worker until terminated."""
from __future__ import annotations

import argparse
import logging
import sys

from shared import logsafe
from shared.config import Settings


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, read settings once, run the worker; 0 after a terminate message or SIGTERM."""
    p = argparse.ArgumentParser(prog="classifycloud worker",
                                description="Poll the request queues of the hosted services, classify, reply.")
    p.add_argument("--services", default=None,
                   help="comma-separated services to host (default: CLASSIFYCLOUD_SERVICES, else all available)")
    p.add_argument("--burst", action="store_true", help="exit once the queues are empty and nothing is held")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING ... (default: CLASSIFYCLOUD_LOG_LEVEL)")
    args = p.parse_args(argv)
    overrides = {}
    if args.services is not None:
        overrides["services"] = tuple(s.strip() for s in args.services.split(",") if s.strip())
    settings = Settings.from_env(**overrides)
    logging.basicConfig(level=(args.log_level or settings.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    logsafe.install()   # client strings never start a forged log line
    from shared.lifeline import watch_parent
    from worker.loop import Worker  # after logging is set up: model loading logs
    watch_parent(settings.parent_pid)   # a local-stack worker ends with `classifycloud up`
    return Worker(settings).work(burst=args.burst)


if __name__ == "__main__":
    sys.exit(main())
