"""Settings: one frozen object per process, read once from CLASSIFYCLOUD_* variables.

Every default lives in this module. AWS endpoint, region and credentials are not
settings of ours: boto3 reads AWS_ENDPOINT_URL, AWS_REGION and the credential
chain itself (see shared/aws.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Mapping

ENV_PREFIX = "CLASSIFYCLOUD_"
WEB_PROBE_THREADS = 2      # derived gunicorn threads kept for probes and polls beyond the waiting requests
WEB_MIN_THREADS = 8
WEB_MAX_THREADS = 256      # past this a process is better split (web_processes): one GIL, one reply listener


@dataclass(frozen=True)
class Settings:
    """Every tunable of every ClassifyCloud process, with its documented default."""

    # --- naming and storage -------------------------------------------------
    prefix: str = "classifycloud"            # queue, bucket and tag prefix
    bucket: str = ""                          # "" -> "<prefix>-data"
    catalogue: str = ""                       # YAML path; "" -> the packaged shared/services.yaml
    services: tuple[str, ...] = ()            # services a worker hosts; () -> every available one
    region: str = "us-east-1"                 # used only when AWS_REGION/AWS_DEFAULT_REGION are unset
    models_refresh_s: float = 20.0            # worker: re-read s3://<bucket>/models/*/entry.yaml this often (0: start only)
    catalogue_ttl_s: float = 10.0             # web, autoscaler: cache the packaged + S3 catalogue this long
    catalogue_s3_replaces_packaged: bool = False  # an S3 entry may replace a packaged service of its name
                                              # (off: such an entry is refused and listed with its reason)
    kinds: tuple[str, ...] = ()               # plug-in kinds: modules like shared/kinds/<kind>.py whose KIND names
                                              # its worker handler ("module:Class"); read at import by shared.kinds

    # --- queues -------------------------------------------------------------
    visibility_timeout_s: int = 60            # request queues: time a worker holds a message
    max_receive_count: int = 5                # deliveries before a request goes to its DLQ
    wait_time_s: int = 20                     # SQS long-poll wait
    message_retention_s: int = 86400          # request queues keep a message one day
    terminate_retention_s: int = 60           # terminate queue: short retention

    # --- web ----------------------------------------------------------------
    reply_timeout_s: float = 120.0            # wait for a reply before answering 504 with the job id
    max_upload_bytes: int = 20 * 1024 * 1024  # images larger than this -> 413 (routes without images: 64 KiB)
    max_inflight_body_bytes: int = 64 * 1024 * 1024  # body bytes one web process holds at once; past it 503
    trusted_hosts: tuple[str, ...] = ()       # Host headers the web answers (ALB DNS, domains); () -> any
    proxy_hops: int = 0                       # proxies (ALB) in front of the web whose X-Forwarded-* count
    web_processes: int = 2                    # gunicorn worker processes
    web_threads: int = 0                      # gunicorn threads per process; 0 -> derived (web_thread_count)
    web_expected_concurrency: int = 30        # requests one process holds waiting at once in normal running
    web_expected_rps: float = 0.25            # requests/s one process must keep taking while every reply waits
                                              # the full reply_timeout_s (a stalled fleet): sizes the derived threads
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    reply_heartbeat_s: float = 30.0           # a web process re-tags its reply queue this often (owner alive)
    reply_queue_grace_s: float = 300.0        # the janitor deletes a reply queue whose owner is silent this long
    job_ttl_s: int = 6 * 3600                 # POST /jobs without ttl_s: not started this long after submission,
                                              # a job ends `expired` (the worker answers that instead of running it)
    job_ttl_max_s: int = 23 * 3600            # the largest ttl_s taken: under message_retention_s, so a job's
                                              # deadline always comes before SQS could drop its message
    job_invocation_timeout_s: int = 900       # POST /jobs without invocation_timeout_s: the worker's time on a job
                                              # (fetch + inference) past this, or no answer by expiry + this, fails
                                              # it as invocation_timeout (SageMaker async's InvocationTimeoutSeconds)
    job_invocation_timeout_max_s: int = 3600  # the largest invocation_timeout_s taken
    idempotency_window_s: int = 86400         # POST /jobs: an Idempotency-Key names one job this long
    idempotency_claim_s: float = 60.0         # a key claimed but never marked sent (its web process died) is
                                              # taken over after this, with the same job id
    shutdown_drain_s: float = 30.0            # on SIGTERM, waiting requests get this long for their reply, then a
                                              # 503 with their job id; gunicorn's graceful timeout outlasts the reply wait

    # --- worker -------------------------------------------------------------
    instance_id: str = ""                     # "" -> EC2 metadata (IMDSv2), else hostname-pid
    buffer_size: int = 32                     # held messages per worker; > max_batch_size so receiving overlaps inference
    max_batch_size: int = 16                  # images per inference batch
    max_batch_wait_ms: int = 5                # wait for more messages of the same service
    terminate_check_interval_s: float = 2.5   # an idle worker checks the terminate queue this often, capped at
                                              # terminate_expiry_s / 2 (logged); a busy worker never takes one
    terminate_expiry_s: float = 5.0           # terminate messages older than this are stale
    device: str = "auto"                      # auto | cpu | cuda | cuda:N
    model_dir: str = ""                       # where catalogue weight paths are resolved from
    decode_threads: int = 4                   # preprocessing thread pool size
    heartbeat_interval_s: float = 10.0        # worker writes heartbeats/<id>.json this often
    heartbeat_max_age_s: float = 30.0         # older heartbeats mean the worker is gone
    selfcheck_after_failures: int = 3         # model failures in a row (a whole batch's forward raising) before the
                                              # worker runs its model on a bundled photo; failing that too, it
                                              # gives back its work and exits 4 to be replaced (0: never)
    worker_stall_s: float = 60.0              # a worker holding work whose loop made no step for a full batch's
                                              # expected time (fetch deadline + batch x s/request) plus this is
                                              # wedged: it releases its messages and exits; the autoscaler replaces it
    protection_idle_s: float = 30.0           # asg fleet: clear scale-in protection after idle this long
    protection_poll_s: float = 1.0            # asg fleet: how often the worker compares held work and protection
    spot_poll_s: float = 5.0                  # on EC2: poll the metadata for spot / rebalance notices (0: off)
    # inference engine (worker/models): speed knobs; fp16/bf16 shift scores slightly
    precision: str = "auto"                   # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16 (autocast)
    channels_last: bool = True                # NHWC memory format: tensor cores on CUDA, oneDNN on CPU
    compile_mode: str = ""                    # "" off | default | reduce-overhead (CUDA graphs) | max-autotune
    onnx_threads: int = 0                     # ONNX Runtime intra-op threads; 0 -> the cores this process may run on
    gallery_max_entries: int = 1000          # facesearch: faces per gallery (an enrolment past it -> 409 gallery_full)
    weights_cache: str = ""                   # where s3:// weights are downloaded; "" -> <tmp>/classifycloud-weights
    # backend: auto (worker/models/backends/auto_backend.py): candidates timed on real photos at load
    backend_probe_images: tuple[str, ...] = ()  # photo paths; () -> the bundled samples (chelsea, coffee, ...)
    backend_probe_repeats: int = 3            # timed forwards per batch size (median kept), after one warm-up
    backend_probe_budget_s: float = 1.0       # ... fewer when a candidate's timed runs pass this (a slow one)
    backend_auto: tuple[str, ...] = ()        # services served with backend auto although their entry says torch:
                                              # opt-in, as auto adds seconds to every worker start (docs/BENCHMARKS.md)
    backend_export_dir: str = ""              # ONNX exports made for auto; "" -> <weights cache>/exports
    cpu_stats_path: str = ""                  # worker: model CPU counters file (bench/e2e.py reads it); "" off

    # --- safe fetch ---------------------------------------------------------
    fetch_max_bytes: int = 20 * 1024 * 1024
    fetch_connect_timeout_s: float = 3.0
    fetch_read_timeout_s: float = 10.0
    fetch_deadline_s: float = 15.0            # hard wall-clock bound on a whole URL fetch (all hops, headers, body)
    fetch_batch_wait_s: float = 2.0           # a batch infers what is fetched by then; stragglers follow alone
    max_image_pixels: int = 40_000_000        # larger images are refused (bounds decode time and memory)
    fetch_max_redirects: int = 5
    fetch_allow_loopback: bool = False        # only the local stack turns this on (its sample photos)
    own_hosts: tuple[str, ...] = ()           # this stack's public host names (ALB DNS, domains): never fetched

    # --- autoscaler ---------------------------------------------------------
    policy: str = "backlog"                   # backlog | xcloud-baseline (old name: classifycloud)
    tick_s: float = 5.0
    min_workers: int = 1
    max_workers: int = 10
    latency_budget_s: float = 10.0            # backlog policy: drain what waits within this time
    seconds_per_request: float = 0.2          # fallback when the catalogue gives none
    scale_in_window_s: float = 60.0           # idle this long before scaling in
    scale_in_fraction: float = 0.5            # at most this share of the fleet stops per step
    launch_template: str = ""                 # EC2 launch template name or id (lt-...)
    pool_tag: str = ""                        # "" -> "<prefix>-workers"
    fleet: str = "local"                      # local | asg (AWS: the Auto Scaling group) | ec2 (run_instances)
    asg_names: tuple[str, ...] = ()           # asg fleet: groups, filled in order; () -> <prefix>-workers-warm,<prefix>-workers
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

    # --- bulk: batches over a bucket, notifications (shared/batches.py, autoscaler/batches.py) ---
    batch_max_items: int = 1000               # POST /batches: items in an inline list at most (bigger: a manifest)
    batch_shard_lines: int = 1000             # output JSON Lines per shard file
    batch_buckets: tuple[str, ...] = ()       # customer buckets the deployment's role was granted: keys off, any
                                              # batch may use them; keys on, a key only the prefixes granted to it
                                              # (`classifycloud keys grant`); the data bucket: batch-io/<key>/ only
    batch_manifest_max_bytes: int = 64 << 20  # a manifest larger than this fails its batch (manifest_too_large)
    batch_max_lines: int = 100_000            # items of one manifest or prefix at most (more: input_too_large)
    batch_tick_s: float = 1.0                 # the batch driver expands, enqueues, tallies and notifies this often
    batch_checkpoint_items: int = 200         # the driver records its enqueue cursor after this many sends
    batch_max_active_per_key: int = 4         # POST /batches: a key's batches not yet final at most (429 too_many_batches)
    batch_max_open_items_per_key: int = 200_000  # a key's unanswered batch items at most, checked by the web (inline)
                                              # and the driver (expanded input: the batch fails too_many_items)
    batch_lost_grace_s: float = 120.0         # a running batch's bulk queue (and DLQ) empty this long while items lack
                                              # records: their messages are gone (expired, purged), so they are sent again
    batch_time_limit_max_s: int = 86400 * 14  # POST /batches time_limit_s at most; past its limit a batch's open items
                                              # end as failed: expired
    batch_link_expiry_s: int = 86400 * 2      # presigned GET of an S3 item: outlives the bulk queue's retention
    bulk_visibility_timeout_s: int = 120      # bulk queues: a worker holds an item this long
    bulk_receive: int = 4                     # worker: bulk items taken at most per receive: one small batch, so
                                              # an interactive request waits for little (GPU: 8-16 are as quick)
    bulk_yield_s: float = 0.5                 # worker: bulk waits until interactive queues were quiet this long
    bulk_wait_time_s: int = 2                 # worker: long poll on a bulk queue (short: it re-checks the gate)
    notify_max_attempts: int = 8              # notification deliveries tried at most (then recorded as failed)
    notify_backoff_s: float = 2.0             # first retry after this, doubling (capped at 300 s)
    notify_workers: int = 8                   # notices delivered at once, off the batch driver's thread
    notify_per_key: int = 2                   # of those, at most this many for one API key (a slow receiver
                                              # holds its own key's slots, never another key's)
    notify_timeout_s: float = 10.0            # one webhook POST's whole time limit

    # --- metrics ------------------------------------------------------------
    metrics_enabled: bool = True
    metrics_namespace: str = "ClassifyCloud"
    metrics_interval_s: float = 10.0
    metrics_sink: str = "api"                 # api (put_metric_data) | emf (embedded metric format log lines) | both
    metrics_emf_path: str = ""                # emf sink: file the CloudWatch agent tails; "" -> stdout

    # --- edge: API keys and the usage log (webserver/auth.py, webserver/keys.py, webserver/usage.py) ---
    api_keys: str = "auto"                    # on | off | auto: on everywhere except in `classifycloud up` (the
                                              # embedded stack turns auto into off); an endpoint variable never does
    api_key_rate_limit: float = 10.0          # default for new keys: sustained requests/s per key (per web process)
    api_key_burst: int = 20                   # default for new keys: token-bucket size
    api_key_monthly_quota: int = 100000       # default for new keys: calls per calendar month (UTC)
    api_key_cache_s: float = 5.0              # a key record is re-read this often (revocation takes effect within)
    quota_block_s: float = 10.0               # a web process reserves a key's quota in blocks of its calls in the
    quota_block_max: int = 1000               # last quota_block_s seconds (1..quota_block_max; webserver/keys.py)
    usage_log: bool = True                    # count API calls per (key, service, minute) in each web process
    usage_flush_interval_s: float = 10.0      # write the counts (one DynamoDB item per key, service and minute seen)
                                              # this often; a crash loses at most this much of one process's usage
    usage_buffer_max: int = 50000             # (key, service, minute) aggregates held between flushes at most
                                              # (beyond: a call of a new one is dropped and logged)
    usage_ttl_days: int = 90                  # DynamoDB TTL of a usage item

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
    def asg_group_names(self) -> tuple[str, ...]:
        """The workers' Auto Scaling groups in fill order: the warm-pool burst group, then the spot group."""
        return self.asg_names or (f"{self.prefix}-workers-warm", f"{self.prefix}-workers")

    @property
    def pool_tag_value(self) -> str:
        """The tag value that marks the worker pool's instances."""
        return self.pool_tag or f"{self.prefix}-workers"

    @property
    def web_thread_count(self) -> int:
        """gunicorn threads per process: web_threads, or enough for the expected concurrency and for a stall.

        Each synchronous request holds a thread until its reply or reply_timeout_s: in a stall that is
        rate x reply timeout threads (Little's law), in normal running web_expected_concurrency; the larger,
        plus WEB_PROBE_THREADS so /readyz and /jobs polls still answer; bounded."""
        if self.web_threads > 0:
            return self.web_threads
        stalled = math.ceil(self.web_expected_rps * self.reply_timeout_s)
        held = max(self.web_expected_concurrency, stalled)
        return max(WEB_MIN_THREADS, min(WEB_MAX_THREADS, held + WEB_PROBE_THREADS))

    @property
    def api_keys_enabled(self) -> bool:
        """Whether requests need an API key: only an explicit off turns them off (auto fails closed)."""
        return self.api_keys.strip().lower() not in ("off", "false", "0", "no")

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
