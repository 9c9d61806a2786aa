"""The worker's side of its fleet: scale-in protection while it holds work, interruption notices, self-removal.

One object, FleetAgent, is the seam with worker/loop.py: start() after the models are loaded
(it waits while the instance is only being warmed for the warm pool), close(stop_reason) at the
end of teardown. Off an Auto Scaling group (fleet local / ec2) the protection part is off; off
EC2 the interruption watch is off.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from shared.aws import client
from shared.config import Settings
from worker.imds import Imds, imds_base
from worker.spot import InterruptionWatch

log = logging.getLogger(__name__)

TARGET_STATE = "autoscaling/target-lifecycle-state"   # "Warmed:Stopped" while warming, "InService" to serve


class ScaleInProtection:
    """Protected from scale-in as soon as work is held; unprotected after protection_idle_s of holding nothing.

    Debounced: a worker answering a steady stream keeps its protection instead of toggling it
    per message (two API calls per request would hit the Auto Scaling API rate limits).
    """

    def __init__(self, autoscaling, group: str, instance_id: str, held: Callable[[], int], idle_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.autoscaling = autoscaling
        self.group = group
        self.instance_id = instance_id
        self.held = held
        self.idle_s = idle_s
        self.clock = clock
        self.protected: bool | None = None      # unknown until set once (a reused warm instance may carry it)
        self.changes = 0
        self._idle_since: float | None = None

    def sync(self) -> None:
        """Compare held work with the protection and set it when they disagree (debounced when idle)."""
        now = self.clock()
        if self.held() > 0:
            self._idle_since = None
            if self.protected is not True:
                self.set(True)
            return
        if self._idle_since is None:
            self._idle_since = now
        if self.protected is not False and now - self._idle_since >= self.idle_s:
            self.set(False)

    def set(self, protected: bool) -> bool:
        """SetInstanceProtection on this instance; False (logged, retried next sync) when it fails."""
        try:
            self.autoscaling.set_instance_protection(InstanceIds=[self.instance_id], AutoScalingGroupName=self.group,
                                                     ProtectedFromScaleIn=protected)
        except Exception as exc:
            log.warning("scale-in protection of %s not %s: %s", self.instance_id, "set" if protected else "cleared", exc)
            return False
        self.protected = protected
        self.changes += 1
        log.info("instance %s %s scale-in", self.instance_id, "protected from" if protected else "open to")
        return True


class FleetAgent:
    """Keeps scale-in protection in step with held work, stops the worker on an interruption notice,
    and on a terminate message removes its own instance from the group (desired capacity - 1)."""

    def __init__(self, settings: Settings, instance_id: str, held: Callable[[], int],
                 on_notice: Callable[[str], None], autoscaling=None, imds: Imds | None = None):
        self.settings = settings
        self.instance_id = instance_id
        self.on_notice = on_notice
        self.autoscaling = (autoscaling or client("autoscaling", settings)) if settings.fleet == "asg" else None
        self.group = self.find_group() if self.autoscaling is not None else None
        self.protection = ScaleInProtection(self.autoscaling, self.group, instance_id, held,
                                            settings.protection_idle_s) if self.group else None
        self.imds = imds if imds is not None else (Imds() if on_ec2(settings) else None)
        self.watch = InterruptionWatch(self.imds, on_notice, settings.spot_poll_s) \
            if self.imds is not None and settings.spot_poll_s > 0 else None
        self.removed = False
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def find_group(self) -> str | None:
        """The Auto Scaling group this instance belongs to (None, logged, when it belongs to none)."""
        try:
            resp = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[self.instance_id])
        except Exception as exc:
            log.warning("auto scaling group of %s not readable (%s): no scale-in protection", self.instance_id, exc)
            return None
        found = resp.get("AutoScalingInstances", [])
        if not found:
            log.warning("instance %s is in no auto scaling group: no scale-in protection", self.instance_id)
            return None
        return found[0]["AutoScalingGroupName"]

    @classmethod
    def start(cls, settings: Settings, instance_id: str, held: Callable[[], int],
              on_notice: Callable[[str], None], **kw) -> "FleetAgent":
        """An agent, started: waits while the instance is warming, then protection and watch threads."""
        agent = cls(settings, instance_id, held, on_notice, **kw)
        agent.wait_in_service()
        if agent.watch is not None:
            agent.watch.start()
        if agent.protection is not None:
            agent._thread = threading.Thread(target=agent._keep, name="scale-in-protection", daemon=True)
            agent._thread.start()
        return agent

    def wait_in_service(self, poll_s: float = 5.0) -> str | None:
        """Block while the group only warms this instance for its warm pool (it is stopped, not served)."""
        if self.group is None or self.imds is None:
            return None
        while True:
            try:
                state = self.imds.get(TARGET_STATE)
            except OSError as exc:
                log.warning("target lifecycle state unreadable (%s): serving", exc)
                return None
            if not state or not state.startswith("Warmed"):
                return state
            log.info("instance %s is being warmed (%s): models on disk, not serving", self.instance_id, state)
            time.sleep(poll_s)

    def may_leave(self) -> bool:
        """Whether this instance may leave its group with a capacity decrement: desired > min.

        AWS refuses TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=True) at the
        group's minimum size, so a worker there must not take a terminate: it would exit and leave its
        instance InService, billed, with no worker. Off a group (or unreadable: logged) it may.
        """
        if self.group is None:
            return True
        try:
            g = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])["AutoScalingGroups"]
        except Exception as exc:   # the removal itself still guards the floor (remove_self)
            log.warning("group %s not readable (%s): taking the terminate", self.group, exc)
            return True
        return not g or int(g[0]["DesiredCapacity"]) > int(g[0]["MinSize"])

    def _keep(self) -> None:
        while not self._stop_event.wait(self.settings.protection_poll_s):
            self.protection.sync()

    def close(self, stop_reason: str | None) -> None:
        """Stop the threads; open the instance to scale-in; after a terminate message remove it from the group."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.watch is not None:
            self.watch.stop()
        if self.protection is None:
            return
        if self.protection.protected is not False:
            self.protection.set(False)
        reason = stop_reason or ""
        if reason.startswith("terminate"):
            self.remove_self(decrement=True)      # scale-in: the group must not replace it
        elif reason.startswith("broken"):
            self.remove_self(decrement=False)     # its model cannot answer: the group launches a sound one
        elif self.watch is not None and self.watch.notice and reason == self.watch.notice:
            self.remove_self(decrement=False)     # spot / rebalance: replaced now, not after the reclaim

    def remove_self(self, decrement: bool = True, tries: int = 3) -> bool:
        """TerminateInstanceInAutoScalingGroup (with a decrement: the group does not replace this worker).

        At the group's minimum size AWS refuses the decrement. may_leave() keeps such a worker from taking
        a terminate, but two workers of one group may both pass it at min + 1: the second one then leaves
        without the decrement, so the group replaces its instance instead of keeping it billed and idle.
        """
        for attempt in range(tries):
            try:
                self.autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=self.instance_id,
                                                                          ShouldDecrementDesiredCapacity=decrement)
                break
            except Exception as exc:   # throttling or a network blip: again, then give up (logged)
                if decrement and below_min_size(exc):
                    log.warning("instance %s: %s refuses to shrink below its minimum size; leaving it to be "
                                "replaced", self.instance_id, self.group)
                    return self.remove_self(decrement=False, tries=tries)
                if attempt == tries - 1:
                    # the instance keeps running without a worker until its stale heartbeat gets it replaced
                    log.error("instance %s not removed from %s: %s", self.instance_id, self.group, exc)
                    return False
                time.sleep(2 ** attempt)
        self.removed = True
        log.info("instance %s removed from %s (%s)", self.instance_id, self.group,
                 "desired capacity lowered" if decrement else "the group replaces it")
        return True


def below_min_size(exc: Exception) -> bool:
    """Whether an Auto Scaling error is AWS's refusal to go below a group's minimum size."""
    error = getattr(exc, "response", {}).get("Error", {})
    return error.get("Code") == "ValidationError" and "min size" in error.get("Message", "").lower()


def on_ec2(settings: Settings) -> bool:
    """Whether instance metadata is worth asking: an EC2 fleet, or an endpoint set explicitly (tests)."""
    if imds_base() is None:
        return False
    return settings.fleet != "local" or bool(os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
