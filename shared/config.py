"""Settings: one frozen object per process, read once from CLASSIFYCLOUD_* variables.

Every default lives in this module. AWS endpoint, region and credentials are not
settings of ours: boto3 reads AWS_ENDPOINT_URL, AWS_REGION and the credential
chain itself (see shared/aws.py).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Mapping

ENV_PREFIX = "CLASSIFYCLOUD_"


@dataclass(frozen=True)
class Settings:
    """Every tunable of every ClassifyCloud process, with its documented default."""

    # --- naming and storage -------------------------------------------------
    prefix: str = "classifycloud"            # queue, bucket and tag prefix
    bucket: str = ""                          # "" -> "<prefix>-data"
    catalogue: str = ""                       # YAML path; "" -> the packaged shared/services.yaml
    services: tuple[str, ...] = ()            # services a worker hosts; () -> every available one
    region: str = "us-east-1"                 # used only when AWS_REGION/AWS_DEFAULT_REGION are unset

    # --- queues -------------------------------------------------------------
    visibility_timeout_s: int = 60            # request queues: time a worker holds a message
    max_receive_count: int = 5                # deliveries before a request goes to its DLQ
    wait_time_s: int = 20                     # SQS long-poll wait
    message_retention_s: int = 86400          # request queues keep a message one day
    terminate_retention_s: int = 60           # terminate queue: short retention

    # --- web ----------------------------------------------------------------
    reply_timeout_s: float = 120.0            # wait for a reply before answering 504 with the job id
    max_upload_bytes: int = 20 * 1024 * 1024  # request bodies larger than this -> 413
    web_processes: int = 2                    # gunicorn worker processes
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    reply_heartbeat_s: float = 30.0           # a web process re-tags its reply queue this often (owner alive)
    reply_queue_grace_s: float = 300.0        # the janitor deletes a reply queue whose owner is silent this long
    shutdown_drain_s: float = 30.0            # on SIGTERM, waiting requests get this long for their reply, then a
                                              # 503 with their job id; gunicorn's graceful timeout outlasts the reply wait

    # --- worker -------------------------------------------------------------
    instance_id: str = ""                     # "" -> EC2 metadata (IMDSv2), else hostname-pid
    buffer_size: int = 32                     # held messages per worker; > max_batch_size so receiving overlaps inference
    max_batch_size: int = 16                  # images per inference batch
    max_batch_wait_ms: int = 5                # wait for more messages of the same service
    terminate_check_interval_s: float = 20.0  # an idle worker checks the terminate queue this often (at most
                                              # terminate_expiry_s / 2); a busy worker never takes a terminate
    terminate_expiry_s: float = 5.0           # terminate messages older than this are stale
    device: str = "auto"                      # auto | cpu | cuda | cuda:N
    model_dir: str = ""                       # where catalogue weight paths are resolved from
    decode_threads: int = 4                   # preprocessing thread pool size
    heartbeat_interval_s: float = 10.0        # worker writes heartbeats/<id>.json this often
    heartbeat_max_age_s: float = 30.0         # older heartbeats mean the worker is gone
    # inference engine (worker/models): speed knobs; fp16/bf16 shift scores slightly
    precision: str = "auto"                   # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16 (autocast)
    channels_last: bool = True                # NHWC memory format: tensor cores on CUDA, oneDNN on CPU
    compile_mode: str = ""                    # "" off | default | reduce-overhead (CUDA graphs) | max-autotune
    onnx_threads: int = 0                     # ONNX Runtime intra-op threads; 0 -> its default (all cores)
    weights_cache: str = ""                   # where s3:// weights are downloaded; "" -> <tmp>/classifycloud-weights

    # --- safe fetch ---------------------------------------------------------
    fetch_max_bytes: int = 20 * 1024 * 1024
    fetch_connect_timeout_s: float = 3.0
    fetch_read_timeout_s: float = 10.0
    fetch_max_redirects: int = 5
    fetch_allow_loopback: bool = False        # only the local stack turns this on (its sample photos)

    # --- autoscaler ---------------------------------------------------------
    policy: str = "backlog"                   # backlog | classifycloud
    tick_s: float = 5.0
    min_workers: int = 1
    max_workers: int = 10
    latency_budget_s: float = 10.0            # backlog policy: drain what waits within this time
    seconds_per_request: float = 0.2          # fallback when the catalogue gives none
    scale_in_window_s: float = 60.0           # idle this long before scaling in
    scale_in_fraction: float = 0.5            # at most this share of the fleet stops per step
    launch_template: str = ""                 # EC2 launch template name or id (lt-...)
    pool_tag: str = ""                        # "" -> "<prefix>-workers"
    fleet: str = "local"                      # local | ec2
    boot_delay_s: float = 0.0                 # local fleet: mimic EC2 start-up
    qos: float = 0.9                          # classifycloud policy: QUALITY_OF_SERVICE (messages per worker)
    scaling_factor: float = 1.0               # classifycloud policy: SCALING_FACTOR
    target_utilization: float = 0.75          # backlog policy: keep busy workers <= this share of the fleet
    scale_in_step_s: float = 0.0              # backlog policy: pause between scale-in steps (0: every tick, so
                                              # with tick_s <= terminate_expiry_s a fresh terminate always waits)
    service_time_refresh_s: float = 60.0      # refine seconds_per_request from worker metrics this often
    service_time_alpha: float = 0.3           # EWMA weight of a new service-time observation
    pending_timeout_s: float = 600.0          # ec2 fleet: replace an instance pending longer than this
    impaired_timeout_s: float = 300.0         # ec2 fleet: replace an instance failing status checks this long
    worker_start_grace_s: float = 600.0       # a running worker with no fresh heartbeat this long after it was
                                              # first seen (boot + model load) is hung: replaced
    crash_loop_starts: int = 3                # this many worker starts (or non-zero exits) ...
    crash_loop_window_s: float = 600.0        # ... within this window is a crash loop: reported, replaced
    janitor_interval_s: float = 60.0          # sweep orphan reply queues this often (0: never)

    # --- metrics ------------------------------------------------------------
    metrics_enabled: bool = True
    metrics_namespace: str = "ClassifyCloud"
    metrics_interval_s: float = 10.0
    metrics_sink: str = "api"                 # api (put_metric_data) | emf (embedded metric format log lines) | both
    metrics_emf_path: str = ""                # emf sink: file the CloudWatch agent tails; "" -> stdout

    # --- logging ------------------------------------------------------------
    log_level: str = "INFO"

    # --- local stack --------------------------------------------------------
    parent_pid: int = 0                       # a child of `classifycloud up` exits when this process is gone (0: off)

    extra: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def bucket_name(self) -> str:
        """The S3 bucket for uploads, results and weights."""
        return self.bucket or f"{self.prefix}-data"

    @property
    def pool_tag_value(self) -> str:
        """The tag value that marks the worker pool's instances."""
        return self.pool_tag or f"{self.prefix}-workers"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from CLASSIFYCLOUD_<FIELD> variables, then apply keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (settings stay frozen)."""
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The CLASSIFYCLOUD_* variables that reproduce these settings in a child process."""
        out = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[ENV_PREFIX + f.name.upper()] = str(value)
        return out


def env_names() -> list[str]:
    """Every environment variable the settings read."""
    return [ENV_PREFIX + f.name.upper() for f in fields(Settings) if f.name != "extra"]


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(s.strip() for s in raw.split(",") if s.strip())
        return raw
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()
