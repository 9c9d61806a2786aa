"""Ec2Fleet: workers are EC2 instances launched from a launch template and tagged with the pool."""
from __future__ import annotations

import logging
import time
from datetime import datetime

from autoscaler.fleet import FleetCount
from shared.aws import client
from shared.config import Settings

log = logging.getLogger(__name__)

POOL_TAG_KEY = "classifycloud:pool"      # Terraform's IAM conditions and dashboards use the same key
ALIVE_STATES = ("pending", "running")


class Ec2Fleet:
    """run_instances from the launch template, count by pool tag, replace stuck or impaired instances."""

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
        """Launch up to n instances (MinCount 1: partial capacity is better than none)."""
        if n <= 0:
            return []
        tags = [{"Key": POOL_TAG_KEY, "Value": self.pool}, {"Key": "Name", "Value": f"{self.pool}-worker"}]
        resp = self.ec2.run_instances(LaunchTemplate=self._template(), MinCount=1, MaxCount=n,
                                      TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                                                         {"ResourceType": "volume", "Tags": tags}])
        ids = [i["InstanceId"] for i in resp.get("Instances", [])]
        log.info("ec2 fleet: launched %d/%d instance(s) from %s: %s", len(ids), n, self.settings.launch_template, ids)
        return ids

    def terminate(self, ids: list[str]) -> None:
        """Terminate these instances now (broken ones; scale-in goes through terminate messages)."""
        if ids:
            self.ec2.terminate_instances(InstanceIds=list(ids))
            log.info("ec2 fleet: terminated %s", list(ids))

    def maintain(self) -> list[str]:
        """Replace instances pending too long or failing status checks too long; returns the replaced ids."""
        now = self.clock()
        insts = self.instances()
        broken = []
        for i in insts:
            if i["State"]["Name"] == "pending" and now - _epoch(i.get("LaunchTime")) > self.settings.pending_timeout_s:
                log.warning("ec2 fleet: %s pending for more than %.0fs; replacing it",
                            i["InstanceId"], self.settings.pending_timeout_s)
                broken.append(i["InstanceId"])
        running = [i["InstanceId"] for i in insts if i["State"]["Name"] == "running"]
        impaired = self._impaired(running)
        for iid in list(self._impaired_since):
            if iid not in impaired:
                del self._impaired_since[iid]          # recovered or gone
        for iid in impaired:
            since = self._impaired_since.setdefault(iid, now)
            if now - since > self.settings.impaired_timeout_s:
                log.warning("ec2 fleet: %s failing status checks for more than %.0fs; replacing it",
                            iid, self.settings.impaired_timeout_s)
                broken.append(iid)
                del self._impaired_since[iid]
        if broken:
            self.terminate(broken)
            self.launch(len(broken))
        return broken

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


def _epoch(value) -> float:
    """Seconds since the epoch from boto3's datetime (or a number)."""
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value or 0)
