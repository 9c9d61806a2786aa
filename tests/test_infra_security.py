"""Who may send to the queues, what RunInstances may launch, and whether alarms can notify: the Terraform
policies parsed from the HCL and evaluated here (explicit deny wins, then any allow; conditions as IAM reads them)."""
from __future__ import annotations

import copy
import fnmatch
import importlib.util
import os
import re
import sys
from functools import lru_cache

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF = os.path.join(ROOT, "infra", "terraform")
ACCOUNT = "123456789012"
REGION = "us-east-1"
AMI = "ami-0123456789abcdef0"
TEMPLATE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0worker"
VPC = f"arn:aws:ec2:{REGION}:{ACCOUNT}:vpc/vpc-0stack"
WORKER_SG = f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/sg-0worker"
TERMINATE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-terminate"
REQUESTS = f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-requests-imagenet"
BULK = f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-bulk-imagenet"
BULK_DLQ = f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-bulk-imagenet-dlq"


def role(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/cc-{name}"


# Terraform expressions -> the values a deployment gives them (for evaluation)
REFS = {
    '${aws_iam_role.component["autoscaler"].arn}': role("autoscaler"),
    '${aws_iam_role.component["web"].arn}': role("web"),
    '${aws_iam_role.component["worker"].arn}': role("worker"),
    "${aws_sqs_queue.terminate.arn}": TERMINATE,
    "${aws_launch_template.worker.arn}": TEMPLATE,
    "${aws_security_group.worker.arn}": WORKER_SG,
    "${aws_vpc.main.arn}": VPC,
    "${var.worker_instance_type}": "g5.xlarge",
    "${local.pool_tag_value}": "cc-workers",
    "${var.pool_tag_key}": "classifycloud:pool",
    "${local.account_id}": ACCOUNT,
    "${local.partition}": "aws",
    "${local.region}": REGION,
    "${local.ec2_arn_base}": f"arn:aws:ec2:{REGION}:{ACCOUNT}",
    "${var.ami_id}": AMI,
    "${local.request_queue_arns}": REQUESTS,
    "${local.bulk_queue_arns}": f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-bulk-*",
    "${local.bulk_dlq_arns}": f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-bulk-*-dlq",
    "${module.request_queues.dlq_arns}": f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-requests-imagenet-dlq",
    "${local.client_topic_arns}": f"arn:aws:sns:{REGION}:{ACCOUNT}:*",
    "${local.reply_queue_arns}": f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-reply-*",
    "${aws_s3_bucket.data.arn}": "arn:aws:s3:::cc-data",
}


def resolve(value: str) -> str:
    for ref, real in REFS.items():
        value = value.replace(ref, real)
    assert "${" not in value, f"unresolved reference in {value!r}: add it to REFS"
    return value


def _tool():
    spec = importlib.util.spec_from_file_location("tf_hcl", os.path.join(ROOT, "tools", "tf_hcl.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def blocks(kind: str) -> dict[tuple[str, str], dict]:
    out = {}
    for name in sorted(os.listdir(TF)):
        if name.endswith(".tf"):
            for entry in _tool().load_tf(os.path.join(TF, name)).get(kind, []):
                for rtype, named in entry.items():
                    for rname, body in named.items():
                        out[(rtype, rname)] = body
    return out


@lru_cache(maxsize=1)
def _folder_locals() -> dict:
    return _tool().folder_locals(TF)


def policy(name: str) -> list[dict]:
    """A policy document's statements, those of its source_policy_documents included (as Terraform merges them).

    `name` may pick one instance of a document with for_each: bucket_listing["web"]."""
    base, key = re.fullmatch(r'(\w+)(?:\["(\w+)"\])?', name).groups()
    body = _tool().document(blocks("data")[("aws_iam_policy_document", base)], _folder_locals(), key)
    sources = [re.fullmatch(_tool().DOCUMENT_REFERENCE, ref).group(1)
               for ref in body.get("source_policy_documents", [])]
    return [st for src in sources for st in policy(src)] + body.get("statement", [])


QUEUE_MODULE = os.path.join(TF, "modules", "service_queue", "main.tf")
QUEUE_ARNS = {"request_queues": REQUESTS, "bulk_queues": BULK}   # one queue of each module call


def send_policy(module: str) -> list[dict]:
    """The queue policy modules/service_queue gives the queues of one call in queues.tf, its arguments filled in."""
    (call,) = [body for entry in _tool().load_tf(os.path.join(TF, "queues.tf"))["module"]
               for name, body in entry.items() if name == module]
    data = _tool().load_tf(QUEUE_MODULE)["data"][0]["aws_iam_policy_document"]["queue"]
    args = {"${var.sender_sid}": call["sender_sid"], "${var.sender_role_arn}": call["sender_role_arn"],
            "${aws_sqs_queue.queue[each.key].arn}": QUEUE_ARNS[module]}

    def filled(node):
        if isinstance(node, dict):
            return {k: filled(v) for k, v in node.items()}
        if isinstance(node, list):
            return [filled(v) for v in node]
        return args.get(node, node)
    return filled(data["statement"])


def _condition_holds(cond: dict, context: dict) -> bool:
    test, key, values = cond["test"], cond["variable"], [resolve(v) for v in cond["values"]]
    key = resolve(key)
    if key not in context:  # IAM: a missing key fails every operator except the negated ones
        return test.startswith(("StringNot", "ArnNot"))
    actual = context[key]
    match = {
        "StringEquals": lambda: actual in values,
        "StringNotEquals": lambda: actual not in values,
        "StringLike": lambda: any(fnmatch.fnmatchcase(actual, v) for v in values),
        "ArnEquals": lambda: actual in values,
        "ArnNotEquals": lambda: actual not in values,
        "ArnLike": lambda: any(fnmatch.fnmatchcase(actual, v) for v in values),
        "ArnNotLike": lambda: not any(fnmatch.fnmatchcase(actual, v) for v in values),
        "Bool": lambda: str(actual).lower() in [v.lower() for v in values],
    }
    assert test in match, f"evaluator does not know {test}"
    return match[test]()


def _applies(stmt: dict, principal: str | None, action: str, resource: str, context: dict) -> bool:
    if not any(fnmatch.fnmatchcase(action, a) for a in stmt["actions"]):
        return False
    resources = stmt["resources"] if isinstance(stmt["resources"], list) else [stmt["resources"]]
    if not any(fnmatch.fnmatchcase(resource, resolve(r)) for r in resources):
        return False
    if principal is not None and stmt.get("principals"):
        ids = [resolve(i) for p in stmt["principals"] for i in p["identifiers"]]
        if "*" not in ids and principal not in ids:
            return False
    ctx = dict(context)
    if principal is not None:
        ctx.setdefault("aws:PrincipalArn", principal)
    return all(_condition_holds(c, ctx) for c in stmt.get("condition", []))


def decide(principal: str, action: str, resource: str, identity: list[dict], resource_policy: list[dict],
           context: dict | None = None) -> str:
    """'deny' (explicit), 'allow', or 'implicit-deny' for one call within one account."""
    context = context or {}
    everything = [(s, None) for s in identity] + [(s, principal) for s in resource_policy]
    hits = [s for s, p in everything if _applies(s, p, action, resource, context)]
    if any(s.get("effect", "Allow") == "Deny" for s in hits):
        return "deny"
    return "allow" if any(s.get("effect", "Allow") == "Allow" for s in hits) else "implicit-deny"


ADMIN = [{"actions": ["sqs:*"], "resources": ["*"]}]  # any principal of the account with broad rights


def test_only_the_autoscaler_role_can_send_a_terminate():
    queue_policy = policy("terminate_queue")
    assert decide(role("autoscaler"), "sqs:SendMessage", TERMINATE, policy("autoscaler"), queue_policy) == "allow"
    for forger in (role("worker"), role("web"), f"arn:aws:iam::{ACCOUNT}:user/mallory",
                   f"arn:aws:iam::{ACCOUNT}:role/some-admin"):
        assert decide(forger, "sqs:SendMessage", TERMINATE, ADMIN, queue_policy) == "deny", forger
    # the policy denies sends only: the worker still receives and deletes its terminates
    assert decide(role("worker"), "sqs:ReceiveMessage", TERMINATE, policy("worker"), queue_policy) == "allow"
    assert decide(role("worker"), "sqs:DeleteMessage", TERMINATE, policy("worker"), queue_policy) == "allow"


def test_only_the_batch_driver_can_send_batch_items():
    queue_policy = send_policy("bulk_queues")
    assert decide(role("autoscaler"), "sqs:SendMessage", BULK, policy("autoscaler"), queue_policy) == "allow"
    for forger in (role("worker"), role("web"), f"arn:aws:iam::{ACCOUNT}:user/mallory",
                   f"arn:aws:iam::{ACCOUNT}:role/some-admin"):
        assert decide(forger, "sqs:SendMessage", BULK, ADMIN, queue_policy) == "deny", forger
    # and by their own policies alone, neither the web nor the workers may send items
    for name in ("web", "worker"):
        assert decide(role(name), "sqs:SendMessage", BULK, policy(name), []) == "implicit-deny", name


def test_workers_take_batch_items_and_the_driver_settles_their_dead_letters():
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"):
        assert decide(role("worker"), action, BULK, policy("worker"), send_policy("bulk_queues")) == "allow", action
        assert decide(role("web"), action, BULK, policy("web"), send_policy("bulk_queues")) == "implicit-deny", action
    assert decide(role("autoscaler"), "sqs:ReceiveMessage", BULK, policy("autoscaler"), []) == "implicit-deny"
    assert decide(role("autoscaler"), "sqs:ReceiveMessage", BULK_DLQ, policy("autoscaler"), []) == "allow"
    # a service added later: its bulk queue and DLQ are created by the driver, under the bulk prefix only
    later = f"arn:aws:sqs:{REGION}:{ACCOUNT}:cc-bulk-plants"
    assert decide(role("autoscaler"), "sqs:CreateQueue", later, policy("autoscaler"), []) == "allow"
    assert decide(role("autoscaler"), "sqs:CreateQueue", later + "-dlq", policy("autoscaler"), []) == "allow"
    assert decide(role("autoscaler"), "sqs:CreateQueue", TERMINATE, policy("autoscaler"), []) == "implicit-deny"


def test_notices_publish_only_to_topics_of_this_account_and_region():
    mine = f"arn:aws:sns:{REGION}:{ACCOUNT}:batch-done"
    assert decide(role("autoscaler"), "sns:Publish", mine, policy("autoscaler"), []) == "allow"
    for topic in (f"arn:aws:sns:{REGION}:999999999999:batch-done", f"arn:aws:sns:eu-west-1:{ACCOUNT}:batch-done"):
        assert decide(role("autoscaler"), "sns:Publish", topic, policy("autoscaler"), []) == "implicit-deny", topic
    for name in ("web", "worker"):
        assert decide(role(name), "sns:Publish", mine, policy(name), []) == "implicit-deny", name


def test_only_the_driver_reads_batch_io_and_the_web_cannot_rewrite_traffic():
    io = "arn:aws:s3:::cc-data/batch-io/k0123456789ab/photos/cat.jpg"
    traffic = "arn:aws:s3:::cc-data/models/imagenet/traffic.json"
    assert decide(role("autoscaler"), "s3:GetObject", io, policy("autoscaler"), []) == "allow"
    for name in ("web", "worker"):
        assert decide(role(name), "s3:GetObject", io, policy(name), []) == "implicit-deny", name
    shard = "arn:aws:s3:::cc-data/batch-io/k0123456789ab/out/b0123456789abcdef0123/part-00000.jsonl"
    assert decide(role("web"), "s3:GetObject", shard, policy("web"), []) == "allow"     # GET .../results/<n>
    assert decide(role("worker"), "s3:GetObject", shard, policy("worker"), []) == "implicit-deny"
    assert decide(role("web"), "s3:GetObject", traffic, policy("web"), []) == "allow"
    assert decide(role("web"), "s3:PutObject", traffic, policy("web"), []) == "implicit-deny"
    assert decide(role("autoscaler"), "s3:PutObject", traffic, policy("autoscaler"), []) == "allow"
    weights = "arn:aws:s3:::cc-data/models/imagenet/weights.pt"
    assert decide(role("autoscaler"), "s3:PutObject", weights, policy("autoscaler"), []) == "implicit-deny"


def test_only_the_web_role_can_send_requests():
    queue_policy = send_policy("request_queues")
    assert decide(role("web"), "sqs:SendMessage", REQUESTS, policy("web"), queue_policy) == "allow"
    for forger in (role("worker"), role("autoscaler"), f"arn:aws:iam::{ACCOUNT}:user/mallory"):
        assert decide(forger, "sqs:SendMessage", REQUESTS, ADMIN, queue_policy) == "deny", forger
    assert decide(role("worker"), "sqs:ReceiveMessage", REQUESTS, policy("worker"), queue_policy) == "allow"


def test_every_queue_has_its_send_policy_attached():
    res = blocks("resource")
    assert res[("aws_sqs_queue_policy", "terminate")]["queue_url"] == "${aws_sqs_queue.terminate.id}"
    assert res[("aws_sqs_queue_policy", "terminate")]["policy"] == "${data.aws_iam_policy_document.terminate_queue.json}"
    module = _tool().load_tf(QUEUE_MODULE)["resource"]
    (queue_policies,) = [named["queue"] for entry in module for t, named in entry.items() if t == "aws_sqs_queue_policy"]
    assert queue_policies["for_each"] == "${var.queue_names}"
    assert queue_policies["queue_url"] == "${aws_sqs_queue.queue[each.key].id}"
    assert queue_policies["policy"] == "${data.aws_iam_policy_document.queue[each.key].json}"
    calls = {n: b for e in _tool().load_tf(os.path.join(TF, "queues.tf"))["module"] for n, b in e.items()}
    assert calls["request_queues"]["queue_names"] == "${local.request_queue_names}"
    assert calls["bulk_queues"]["queue_names"] == "${local.bulk_queue_names}"


def _run(resource: str, **context) -> str:
    ctx = {"ec2:LaunchTemplate": TEMPLATE, "ec2:IsLaunchTemplateResource": "true"}
    ctx.update(context)
    return decide(role("autoscaler"), "ec2:RunInstances", resource, policy("autoscaler_ec2_fleet"), [], ctx)


def test_run_instances_launches_only_what_the_worker_template_names():
    base = f"arn:aws:ec2:{REGION}:{ACCOUNT}"
    good = {
        TEMPLATE: {},
        f"arn:aws:ec2:{REGION}::image/{AMI}": {},
        f"{base}:subnet/subnet-0priv": {"ec2:Vpc": VPC},
        WORKER_SG: {"ec2:Vpc": VPC},
        f"{base}:network-interface/*": {},
        f"{base}:volume/*": {},
        f"{base}:instance/*": {"ec2:InstanceType": "g5.xlarge", "aws:RequestTag/classifycloud:pool": "cc-workers"},
    }
    for resource, ctx in good.items():
        assert _run(resource, **ctx) == "allow", resource
    # another AMI, another VPC's subnet, another security group: not from this stack
    assert _run(f"arn:aws:ec2:{REGION}::image/ami-0evil000000000000") == "implicit-deny"
    assert _run(f"{base}:subnet/subnet-0other", **{"ec2:Vpc": f"{base}:vpc/vpc-0other"}) == "implicit-deny"
    assert _run(f"{base}:security-group/sg-0open") == "implicit-deny"
    # parameters overriding the template (IsLaunchTemplateResource false), another type, no pool tag, no template
    assert _run(f"{base}:volume/*", **{"ec2:IsLaunchTemplateResource": "false"}) == "implicit-deny"
    assert _run(f"{base}:instance/*", **{"ec2:InstanceType": "p5.48xlarge",
                                         "aws:RequestTag/classifycloud:pool": "cc-workers"}) == "implicit-deny"
    assert _run(f"{base}:instance/*", **{"ec2:InstanceType": "g5.xlarge"}) == "implicit-deny"
    assert decide(role("autoscaler"), "ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/{AMI}",
                  policy("autoscaler_ec2_fleet"), [], {"ec2:IsLaunchTemplateResource": "true"}) == "implicit-deny"


def test_every_run_instances_statement_requires_the_template_and_no_override():
    runs = [s for s in policy("autoscaler_ec2_fleet") if "ec2:RunInstances" in s["actions"]]
    assert runs
    for s in runs:
        keys = {c["variable"]: c for c in s.get("condition", [])}
        assert keys["ec2:LaunchTemplate"]["values"] == ["${aws_launch_template.worker.arn}"], s["sid"]
        if s["resources"] != ["${aws_launch_template.worker.arn}"]:
            assert keys["ec2:IsLaunchTemplateResource"]["values"] == ["true"], s["sid"]
        assert not any(r.endswith(("image/*", "security-group/*")) for r in s["resources"]), s["sid"]


def test_a_generated_run_instances_statement_without_the_template_condition_is_caught(monkeypatch):
    local_values = copy.deepcopy(_folder_locals())
    (tagged,) = [s for s in local_values["run_worker_statements"] if s["sid"] == "RunTaggedWorkers"]
    tagged["conditions"].remove("${local.from_worker_template}")
    monkeypatch.setattr(sys.modules[__name__], "_folder_locals", lambda: local_values)
    with pytest.raises(KeyError, match="ec2:LaunchTemplate"):   # the check finds no template condition
        test_every_run_instances_statement_requires_the_template_and_no_override()


GENERATED = """
locals {
  from_template = { test = "ArnLike", variable = "ec2:LaunchTemplate", values = [aws_launch_template.worker.arn] }
  bool_key      = { test = "Bool", variable = "k", values = ["true"] }
  runs          = { Run = { arns = [local.ec2_arn_base], keys = [local.from_template, local.bool_key] } }
}
data "aws_iam_policy_document" "d" {
  statement {
    sid     = "Static"
    actions = ["ec2:CreateTags"]
  }
  dynamic "statement" {
    for_each = local.runs
    iterator = run
    content {
      sid       = run.key
      actions   = ["ec2:RunInstances"]
      resources = run.value.arns
      dynamic "condition" {
        for_each = run.value.keys
        iterator = key
        content {
          test = key.value.test
          variable = key.value.variable
          values = key.value.values
        }
      }
    }
  }
}
"""


def test_generated_statements_read_as_the_blocks_terraform_writes_out(tmp_path):
    (tmp_path / "d.tf").write_text(GENERATED)
    tool = _tool()
    body = tool.load_tf(str(tmp_path / "d.tf"))["data"][0]["aws_iam_policy_document"]["d"]
    assert tool.expand_dynamic(body, tool.folder_locals(str(tmp_path)))["statement"] == [
        {"sid": "Static", "actions": ["ec2:CreateTags"]},
        {"sid": "Run", "actions": ["ec2:RunInstances"], "resources": ["${local.ec2_arn_base}"],
         "condition": [{"test": "ArnLike", "variable": "ec2:LaunchTemplate",
                        "values": ["${aws_launch_template.worker.arn}"]},
                       {"test": "Bool", "variable": "k", "values": ["true"]}]},
    ]


def test_the_alarm_topic_uses_a_customer_key_whose_policy_lets_cloudwatch_alarms_publish():
    res = blocks("resource")
    topic = res[("aws_sns_topic", "alarms")]
    assert topic["kms_master_key_id"] == "${aws_kms_key.alarms.arn}"  # not alias/aws/sns
    key = res[("aws_kms_key", "alarms")]
    assert key["enable_key_rotation"] is True
    assert key["policy"] == "${data.aws_iam_policy_document.alarms_key.json}"
    key_policy = policy("alarms_key")
    alarm = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:cc-requests-imagenet-dlq-not-empty"
    ctx = {"aws:SourceAccount": ACCOUNT, "aws:SourceArn": alarm}
    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        assert decide("cloudwatch.amazonaws.com", action, "*", [], key_policy, ctx) == "allow", action
    other = {"aws:SourceAccount": "999999999999", "aws:SourceArn": alarm.replace(ACCOUNT, "999999999999")}
    assert decide("cloudwatch.amazonaws.com", "kms:Decrypt", "*", [], key_policy, other) == "implicit-deny"
    assert decide("cloudwatch.amazonaws.com", "kms:ScheduleKeyDeletion", "*", [], key_policy, ctx) == "implicit-deny"


def test_web_role_keeps_only_the_reply_queue_calls_it_makes():
    actions = {a for s in policy("web") for a in s["actions"]}
    assert "sqs:SetQueueAttributes" not in actions
    # TagQueue only for its own reply queues: the owner/heartbeat tags the orphan-queue janitor reads.
    tagging = [s for s in policy("web") if "sqs:TagQueue" in s["actions"]]
    assert tagging and all("reply" in str(s["resources"]) for s in tagging)
    assert {"sqs:CreateQueue", "sqs:DeleteQueue", "sqs:ReceiveMessage", "sqs:DeleteMessage"} <= actions


def test_a_prefix_containing_reply_is_refused():
    doc = _tool().load_tf(os.path.join(TF, "variables.tf"))
    prefix = next(body for block in doc["variable"] for name, body in block.items() if name == "prefix")
    conditions = " ".join(v["condition"] for v in prefix["validation"])
    assert 'strcontains(var.prefix, "-reply-")' in conditions


@pytest.mark.parametrize("env,setting", [("worker", "CLASSIFYCLOUD_OWN_HOSTS"), ("web", "CLASSIFYCLOUD_TRUSTED_HOSTS")])
def test_the_stacks_public_names_reach_the_settings_that_use_them(env, setting):
    from shared.config import env_names
    assert setting in env_names()
    text = open(os.path.join(TF, "main.tf")).read() + open(os.path.join(TF, "web.tf")).read()
    assert f"{setting}" in text and "local.public_hosts" in text
    assert "aws_lb.web.dns_name" in open(os.path.join(TF, "main.tf")).read()


def _actions(*documents: str) -> set[str]:
    return {a for d in documents for s in policy(d) for a in s["actions"]}


def test_with_the_asg_fleet_the_autoscaler_can_neither_launch_pass_roles_nor_rewrite_queue_policies():
    # what the autoscaler always has: its own document and the group one
    always = _actions("autoscaler", "autoscaler_fleet")
    assert not always & {"ec2:RunInstances", "iam:PassRole", "ec2:TerminateInstances", "ec2:CreateTags",
                         "sqs:SetQueueAttributes"}
    assert decide(role("autoscaler"), "sqs:SetQueueAttributes", REQUESTS, policy("autoscaler"), []) == "implicit-deny"
    assert decide(role("autoscaler"), "sqs:CreateQueue", REQUESTS, policy("autoscaler"), []) == "allow"
    # the ec2 fleet's grants are attached only when Terraform deploys that fleet (default: asg)
    res = blocks("resource")
    ec2 = res[("aws_iam_role_policy", "autoscaler_ec2_fleet")]
    assert ec2["count"] == '${var.autoscaler_fleet == "ec2" ? 1 : 0}'
    assert {"ec2:RunInstances", "iam:PassRole"} <= _actions("autoscaler_ec2_fleet")
    variables = {n: b for blk in _tool().load_tf(os.path.join(TF, "variables.tf"))["variable"] for n, b in blk.items()}
    assert variables["autoscaler_fleet"]["default"] == "asg"
    assert 'CLASSIFYCLOUD_FLEET              = var.autoscaler_fleet' in open(os.path.join(TF, "autoscaler.tf")).read()


def test_the_web_may_erase_faces_of_every_version_but_never_read_them():
    bucket = "arn:aws:s3:::cc-data"
    web_s3 = [s for s in policy("web") if any(a.startswith("s3:") for a in s["actions"])]
    face = f"{bucket}/galleries/k0123456789ab/crew/0f/e1.json"
    for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
        assert decide(role("web"), action, face, web_s3, []) == "allow", action
        assert decide(role("web"), action, f"{bucket}/results/x.json", web_s3, []) == "implicit-deny"
        assert decide(role("web"), action, f"{bucket}/uploads/rid", web_s3, []) == "allow"   # enrolment photos
    assert decide(role("web"), "s3:GetObject", face, web_s3, []) == "implicit-deny"
    assert decide(role("web"), "s3:ListBucketVersions", bucket, web_s3,
                  [], {"s3:prefix": "galleries/k0123456789ab/crew/"}) == "allow"
    assert decide(role("web"), "s3:ListBucketVersions", bucket, web_s3, [], {"s3:prefix": "models/"}) == "implicit-deny"


def test_a_plan_without_a_certificate_is_refused_unless_plain_http_is_allowed():
    listener = blocks("resource")[("aws_lb_listener", "http")]
    (pre,) = listener["lifecycle"][0]["precondition"]
    assert pre["condition"] == '${var.certificate_arn != "" || var.allow_plain_http}'
    variables = {n: b for blk in _tool().load_tf(os.path.join(TF, "variables.tf"))["variable"] for n, b in blk.items()}
    assert variables["allow_plain_http"]["default"] is False and "bool" in variables["allow_plain_http"]["type"]


def test_face_versions_expire_and_faces_have_a_retention_limit():
    lifecycle = blocks("resource")[("aws_s3_bucket_lifecycle_configuration", "data")]
    (rule,) = [r for r in lifecycle["rule"] if r["filter"][0].get("prefix") == "galleries/"]
    assert rule["status"] == "Enabled" and rule["noncurrent_version_expiration"][0]["noncurrent_days"] == 1
    assert "var.gallery_retention_days" in str(rule["dynamic"])
