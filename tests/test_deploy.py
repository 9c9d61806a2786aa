"""The deployment, end to end: the real terraform and AWS provider apply the stack to a moto server, the stack
runs from what they built, and destroy leaves nothing.

A scratch copy of infra/terraform (plus tests/moto_terraform.py's override files for moto's gaps) is
initialised from the provider mirror, validated, planned and applied against a ThreadedMotoServer on
127.0.0.1; the plan after the apply must be empty. The web, the autoscaler and a worker (the AMI's entry
script, standing in for a worker instance) then start with exactly the environment their launch
template's user data writes, plus only the endpoint and dummy credentials that point at moto. A real
photo is classified through the web while the autoscaler scales the worker groups Terraform made, and
`terraform destroy` must leave nothing behind.
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import boto3
import pytest
import requests
import yaml
from moto_terraform import empty_bucket, leftovers, write_overrides
from terraform_tools import ROOT, Terraform, scratch_copy
from waiting import wait_for

from classifycloud.local import free_port

pytestmark = pytest.mark.slow

REGION = "us-east-1"
UNITS = os.path.join(ROOT, "ami", "systemd")
ENTRY = os.path.join(ROOT, "ami", "scripts", "classifycloud-worker-entry.sh")
ENV_FILE = "/etc/classifycloud/classifycloud.env"
CHELSEA = os.path.join(ROOT, "classifycloud", "samples", "chelsea.jpg")
COMPONENTS = {"worker": "classifycloud-worker", "web": "classifycloud-web", "autoscaler": "classifycloud-autoscaler"}
# min_workers = 0 (an operator variable, AWS gets it as it is): the first request finds no worker, so
# the autoscaler must raise a worker group's desired capacity before anything answers.
# allow_plain_http: moto has no certificate to give the ALB; the variable exists for tests and demos, and
# without it the plan is refused while API keys are on (web.tf's precondition; docs/SECURITY.md).
TF_VARS = {"min_workers": "0", "allow_plain_http": "true"}


@dataclass
class Deployment:
    """The applied scratch stack: terraform in its folder, moto's endpoint, outputs and what each step took."""
    tf: Terraform
    endpoint: str
    image: str
    outputs: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    destroyed: bool = False

    def client(self, service: str):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def timed(self, step: str, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        started = time.monotonic()
        # flags before the plan file: terraform stops reading flags at the first positional argument
        result = self.tf.run(args[0], "-no-color", *self.var_args(args[0]), *args[1:], ok=ok)
        self.seconds[step] = round(time.monotonic() - started, 1)
        return result

    def var_args(self, command: str) -> list[str]:
        if command not in ("plan", "destroy"):
            return []
        return [f"-var=ami_id={self.image}"] + [f"-var={k}={v}" for k, v in TF_VARS.items()]


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def aws_endpoint_env(endpoint: str) -> dict[str, str]:
    """The only variables the tests add to a component's environment: moto's endpoint and dummy credentials."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """init from the mirror, validate, plan and apply against a fresh moto server; destroyed at the end if not yet."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    module = scratch_copy(str(tmp_path_factory.mktemp("deploy")))
    write_overrides(module)
    # The provider reads these like any AWS SDK: endpoint, credentials, region; no instance metadata here.
    # Found (or failed, saying how to get them) before anything starts: terraform and the provider mirror.
    tf = Terraform(module, env={**aws_endpoint_env(endpoint), "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                                "AWS_EC2_METADATA_DISABLED": "true"})
    # Its own process: moto keeps its state per process, and an in-process server would share the account
    # with the suite's other moto server, whose queues and buckets the leftover check would then count.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: server.poll() is None and port_open(port), 60, "the deployment's moto server")
    d = Deployment(tf, endpoint, image="")
    try:
        d.image = d.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]   # a moto stock AMI
        started = time.monotonic()
        tf.init()
        d.seconds["init"] = round(time.monotonic() - started, 1)
        d.timed("validate", "validate")
        d.timed("plan", "plan", "-out=tfplan", "-input=false")
        d.timed("apply", "apply", "-input=false", "tfplan")
        d.outputs = {k: v["value"] for k, v in json.loads(tf.run("output", "-json").stdout).items()}
        yield d
    finally:
        if not d.destroyed and d.image:
            try:
                empty_bucket(d.client("s3"), d.outputs.get("bucket", "classifycloud-data"))
            except Exception:   # the bucket may not exist when the apply failed early
                pass
            tf.run("destroy", "-auto-approve", "-no-color", *d.var_args("destroy"), ok=(0, 1))
        server.terminate()
        server.wait(timeout=30)
        print(f"\ndeployment suite, seconds per step: {d.seconds}")


def test_apply_creates_the_stack_and_the_plan_after_it_is_empty(deployment):
    outputs = deployment.outputs
    assert outputs["worker_groups"] == ["classifycloud-workers-warm", "classifycloud-workers"]
    assert outputs["request_queue_urls"]["imagenet"].endswith("/classifycloud-requests-imagenet")
    assert outputs["bulk_queue_urls"]["imagenet"].endswith("/classifycloud-bulk-imagenet")
    assert outputs["bulk_dead_letter_queue_urls"]["imagenet"].endswith("/classifycloud-bulk-imagenet-dlq")
    state = deployment.tf.run("state", "list").stdout.split()
    assert len(state) > 100 and "aws_launch_template.worker" in state
    plan = deployment.timed("replan", "plan", "-detailed-exitcode", "-input=false", ok=(0, 1, 2))
    assert plan.returncode == 0, f"the plan after apply is not empty:\n{plan.stdout[-8000:]}"
    # the bulk queue: the driver's visibility, a DLQ, and a policy that lets only the autoscaler role send
    attrs = deployment.client("sqs").get_queue_attributes(
        QueueUrl=outputs["bulk_queue_urls"]["imagenet"], AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "120" and "classifycloud-bulk-imagenet-dlq" in attrs["RedrivePolicy"]
    assert "OnlyTheBatchDriverSendsItems" in attrs["Policy"] and ":role/classifycloud-autoscaler" in attrs["Policy"]


def launch_template_user_data(deployment: Deployment, name: str) -> str:
    """The default version's user data, base64-decoded as EC2 hands it to the instance."""
    version = deployment.client("ec2").describe_launch_template_versions(
        LaunchTemplateName=name, Versions=["$Default"])["LaunchTemplateVersions"][0]
    return base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()


def environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments and blank lines skipped)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def unit_environment(component: str) -> dict[str, str]:
    """The Environment= lines of the component's systemd unit."""
    env = {}
    for line in open(os.path.join(UNITS, f"{COMPONENTS[component]}.service")):
        m = re.match(r"Environment=(\w+)=(.*)", line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


def instance_environment(deployment: Deployment, component: str) -> dict[str, str]:
    """What the instance's cloud-init writes (the user data's write_files) and its unit reads, as a dict.

    cloud-init: the user data is a #cloud-config document; its write_files entry for the settings file
    holds KEY=VALUE lines, and its runcmd enables this component's unit, which reads that file.
    """
    user_data = launch_template_user_data(deployment, f"classifycloud-{component}")
    assert user_data.startswith("#cloud-config\n"), user_data[:80]
    config = yaml.safe_load(user_data)
    files = {f["path"]: f["content"] for f in config["write_files"]}
    assert ["systemctl", "enable", "--now", f"{COMPONENTS[component]}.service"] in config["runcmd"]
    assert f"EnvironmentFile={ENV_FILE}" in open(os.path.join(UNITS, f"{COMPONENTS[component]}.service")).read()
    return environment_file(files[ENV_FILE])


def test_each_launch_template_user_data_configures_its_own_component(deployment):
    envs = {c: instance_environment(deployment, c) for c in COMPONENTS}
    assert envs["autoscaler"]["CLASSIFYCLOUD_ASG_NAMES"] == "classifycloud-workers-warm,classifycloud-workers"
    assert envs["autoscaler"]["CLASSIFYCLOUD_LAUNCH_TEMPLATE"] == "classifycloud-worker"  # a template that exists
    assert deployment.client("ec2").describe_launch_templates(LaunchTemplateNames=["classifycloud-worker"])
    assert envs["worker"]["CLASSIFYCLOUD_FLEET"] == "asg" and "CLASSIFYCLOUD_ASG_NAMES" not in envs["worker"]
    assert envs["web"]["CLASSIFYCLOUD_PROXY_HOPS"] == "1" and "CLASSIFYCLOUD_FLEET" not in envs["web"]
    alb = deployment.client("elbv2").describe_load_balancers()["LoadBalancers"][0]["DNSName"].lower()
    for env in envs.values():
        assert env["CLASSIFYCLOUD_BUCKET"] == deployment.outputs["bucket"] and alb in env["CLASSIFYCLOUD_OWN_HOSTS"]


class Processes:
    """Started components, each in its own process group; stop() ends them all (SIGTERM, then SIGKILL)."""

    def __init__(self, folder):
        self.folder = folder
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(os.path.join(self.folder, f"{name}.log"), "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=self.folder)
        self.started.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        with open(os.path.join(self.folder, f"{name}.log"), errors="replace") as fh:
            return fh.read()

    def tails(self, chars: int = 3000) -> str:
        """The end of every started component's log (for a failure message)."""
        return "\n".join(f"--- {name} ---\n{self.log(name)[-chars:]}" for name, _ in self.started)

    def stop(self) -> None:
        """SIGTERM to each main process only, as systemd's KillMode=mixed does; what is left gets SIGKILL."""
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)   # the group: anything it left behind
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


@pytest.fixture
def processes(tmp_path):
    """Processes started by a test, stopped (all of them) when it ends."""
    procs = Processes(str(tmp_path))
    yield procs
    procs.stop()



def component_env(deployment: Deployment, component: str, instance_root: str | None = None) -> dict[str, str]:
    """The user data's settings and the unit's Environment= lines, plus only moto's endpoint and dummy credentials.

    PATH is systemd's default for a service; a worker's instance folders (/var/lib/classifycloud-worker, the
    unit's StateDirectory) are re-rooted under `instance_root`, this stand-in's disk.
    """
    env = {**unit_environment(component), **instance_environment(deployment, component)}
    if instance_root is not None:
        env = {k: (instance_root + v if v.startswith("/var/lib/classifycloud") else v) for k, v in env.items()}
    return {**env, **aws_endpoint_env(deployment.endpoint),
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def desired_capacity(deployment: Deployment) -> dict[str, int]:
    groups = deployment.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=deployment.outputs["worker_groups"])["AutoScalingGroups"]
    return {g["AutoScalingGroupName"]: g["DesiredCapacity"] for g in groups}


def test_the_stack_started_from_the_user_data_classifies_a_photo_and_scales_the_worker_groups(deployment, processes,
                                                                                                tmp_path):
    started = time.monotonic()
    assert desired_capacity(deployment) == {"classifycloud-workers-warm": 0, "classifycloud-workers": 0}
    classifycloud = os.path.join(os.path.dirname(sys.executable), "classifycloud")
    port = free_port()
    # The unit runs `classifycloud web` on 0.0.0.0:8080 (the user data's settings); this machine is shared,
    # so the stand-in binds loopback on a free port, by flags, leaving the environment as the user data wrote it.
    web = processes.start("web", [classifycloud, "web", "--host", "127.0.0.1", "--port", str(port)],
                          component_env(deployment, "web"))
    autoscaler = processes.start("autoscaler", [classifycloud, "autoscaler"], component_env(deployment, "autoscaler"))
    base = f"http://127.0.0.1:{port}"
    alb = deployment.outputs["url"].split("://", 1)[1]
    # What the ALB sends: its own DNS name as Host, one X-Forwarded-For hop (CLASSIFYCLOUD_PROXY_HOPS=1).
    headers = {"Host": alb, "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http"}
    # API keys are on in AWS (Terraform's api_keys table): a key made as `classifycloud keys create` makes it
    from classifycloud.keyadmin import create_key
    from shared.config import Settings
    secret, _ = create_key(Settings.from_env(component_env(deployment, "web")), "deploy-suite",
                           dynamodb=deployment.client("dynamodb"))
    headers["Authorization"] = f"Bearer {secret}"

    def ready():
        assert web.poll() is None, processes.log("web")
        try:
            return requests.get(f"{base}/readyz", headers=headers, timeout=5).status_code == 200
        except requests.RequestException:
            return False
    wait_for(ready, 120, "the web's /readyz", explain=processes.tails)

    answer = {}

    def classify():
        with open(CHELSEA, "rb") as fh:
            answer["response"] = requests.post(f"{base}/classify", headers=headers, timeout=180,
                                               files={"image": ("chelsea.jpg", fh, "image/jpeg")},
                                               data={"service": "imagenet", "top_k": "3"})
    client = threading.Thread(target=classify, name="client")
    client.start()
    # No worker exists (min_workers = 0): the queued request must make the autoscaler raise the first group.
    def raised():
        assert autoscaler.poll() is None, processes.log("autoscaler")
        groups = desired_capacity(deployment)
        return groups if groups["classifycloud-workers-warm"] >= 1 else None
    scaled = wait_for(raised, 120, "the autoscaler to raise the warm worker group",
                      explain=lambda: f"client: {[(r.status_code, r.text[:500]) for r in answer.values()]}\n"
                              + processes.tails())
    assert scaled["classifycloud-workers"] == 0      # filled in order: the warm group first
    assert "classifycloud-workers-warm desired capacity 0 -> 1" in processes.log("autoscaler")
    # The group's new instance would boot the AMI, whose unit runs the entry script: so does this stand-in.
    instance = str(tmp_path / "instance")
    worker_env = component_env(deployment, "worker", instance_root=instance)
    worker_env.update(VENV=sys.prefix, STATE_DIRECTORY=instance + "/var/lib/classifycloud-worker")  # systemd's
    os.makedirs(worker_env["STATE_DIRECTORY"])
    worker = processes.start("worker", ["bash", ENTRY], worker_env)
    client.join(timeout=240)
    assert not client.is_alive(), "no answer within 240 s:\n" + processes.tails()
    response = answer["response"]
    assert response.status_code == 200, response.text + processes.tails()
    body = response.json()
    assert body["results"][0]["label"] == "Egyptian cat" and body["results"][0]["index"] == 285, body
    assert body["worker"] and worker.poll() is None
    assert "models: 0 copied" in processes.log("worker")     # the entry script ran its model sync first
    deployment.seconds["stack"] = round(time.monotonic() - started, 1)


def test_destroy_exits_0_and_leaves_nothing(deployment):
    empty_bucket(deployment.client("s3"), deployment.outputs["bucket"])   # versioned: docs/DEPLOY.md, step 7
    deployment.timed("destroy", "destroy", "-auto-approve", "-input=false")
    deployment.destroyed = True
    assert leftovers(deployment.client) == {}
