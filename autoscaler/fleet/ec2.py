"""Ec2Fleet: workers are EC2 instances launched from a launch template and tagged with the pool."""
from __future__ import annotations

import logging
import time
from datetime import datetime

from botocore.exceptions import ClientError

from autoscaler.fleet.base import Fleet, FleetCount
from shared.aws import client
from shared.config import Settings

log = logging.getLogger(__name__)

POOL_TAG_KEY = "classifycloud:pool"      # Terraform's IAM conditions and dashboards use the same key
ALIVE_STATES = ("pending", "running")


class Ec2Fleet(Fleet):
    """run_instances from the launch template, count by pool tag, replace stuck or impaired instances."""

    name = "ec2"

    def __init__(self, settings: Settings, ec2=None, clock=time.time):
        if not settings.launch_template:
            raise ValueError("the ec2 fleet needs CLASSIFYCLOUD_LAUNCH_TEMPLATE (a launch template name or lt- id)")
        self.settings = settings
        self.ec2 = ec2 or client("ec2", settings)
        self.clock = clock
        self.pool = settings.pool_tag_value
        self._impaired_since: dict[str, float] = {}

    def _template(self) -> dict:
        lt = self.settings.launch_template
        key = "LaunchTemplateId" if lt.startswith("lt-") else "LaunchTemplateName"
        return {key: lt, "Version": "$Default"}

    def instances(self) -> list[dict]:
        """The pool's pending and running instances (describe_instances by tag)."""
        out = []
        paginator = self.ec2.get_paginator("describe_instances")
        for page in paginator.paginate(Filters=[{"Name": f"tag:{POOL_TAG_KEY}", "Values": [self.pool]},
                                                {"Name": "instance-state-name", "Values": list(ALIVE_STATES)}]):
            for reservation in page.get("Reservations", []):
                out.extend(i for i in reservation.get("Instances", [])
                           if i.get("State", {}).get("Name") in ALIVE_STATES)
        return out

    def count(self) -> FleetCount:
        """Running and pending instances of the pool."""
        insts = self.instances()
        running = [i["InstanceId"] for i in insts if i["State"]["Name"] == "running"]
        pending = [i["InstanceId"] for i in insts if i["State"]["Name"] == "pending"]
        return FleetCount(running=len(running), pending=len(pending), ids=tuple(running + pending))

    def launch(self, n: int) -> list[str]:
        """Launch up to n instances; partial capacity is taken (MinCount 1) and the rest asked again."""
        ids: list[str] = []
        tags = [{"Key": POOL_TAG_KEY, "Value": self.pool}, {"Key": "Name", "Value": f"{self.pool}-worker"}]
        while len(ids) < n:
            try:
                resp = self.ec2.run_instances(LaunchTemplate=self._template(), MinCount=1, MaxCount=n - len(ids),
                                              TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                                                                 {"ResourceType": "volume", "Tags": tags}])
            except ClientError as exc:
                if not ids:
                    raise                      # nothing launched: the loop logs and skips the tick
                log.warning("ec2 fleet: only %d of %d launched: %s", len(ids), n, exc)
                break
            got = [i["InstanceId"] for i in resp.get("Instances", [])]
            if not got:
                break
            ids.extend(got)
        log.info("ec2 fleet: launched %d/%d instance(s) from %s: %s", len(ids), n, self.settings.launch_template, ids)
        return ids

    def terminate(self, ids: list[str]) -> None:
        """Terminate these instances now (broken ones; scale-in goes through terminate messages)."""
        if ids:
            self.ec2.terminate_instances(InstanceIds=list(ids))
            log.info("ec2 fleet: terminated %s", list(ids))

    def maintain(self) -> list[str]:
        """Replace instances pending too long or failing status checks too long; returns the replaced ids."""
        insts = self.instances()
        running = [i["InstanceId"] for i in insts if i["State"]["Name"] == "running"]
        broken, self._impaired_since = find_broken(insts, self._impaired(running), self._impaired_since,
                                                   self.clock(), self.settings.pending_timeout_s,
                                                   self.settings.impaired_timeout_s)
        if broken:
            self.replace(broken)
        return broken

    def replace(self, ids: list[str]) -> list[str]:
        """Terminate these instances and launch as many new ones; returns the new ids."""
        log.warning("ec2 fleet: replacing %s", list(ids))
        self.terminate(ids)
        return self.launch(len(ids))

    def _impaired(self, ids: list[str]) -> set[str]:
        """Ids whose instance or system status check is 'impaired'."""
        out: set[str] = set()
        for start in range(0, len(ids), 100):
            resp = self.ec2.describe_instance_status(InstanceIds=ids[start:start + 100])
            for st in resp.get("InstanceStatuses", []):
                checks = (st.get("InstanceStatus", {}).get("Status"), st.get("SystemStatus", {}).get("Status"))
                if "impaired" in checks:
                    out.add(st["InstanceId"])
        return out


def find_broken(instances: list[dict], impaired: set[str], impaired_since: dict[str, float], now: float,
                pending_timeout_s: float, impaired_timeout_s: float) -> tuple[list[str], dict[str, float]]:
    """Ids to replace (pending too long, impaired too long) and the updated impaired-since record."""
    broken = [i["InstanceId"] for i in instances if i["State"]["Name"] == "pending"
              and now - _epoch(i.get("LaunchTime")) > pending_timeout_s]
    since = {iid: impaired_since.get(iid, now) for iid in impaired}    # recovered or gone: forgotten
    for iid, t in list(since.items()):
        if now - t > impaired_timeout_s:
            broken.append(iid)
            del since[iid]
    return broken, since


def _epoch(value) -> float:
    """Seconds since the epoch from boto3's datetime (or a number)."""
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value or 0)
