"""iam.tf grants every AWS call the code makes, to the role that makes it, and nothing sweeping.

The code is scanned at test time (AST: client method calls whose names are botocore
operations of sqs/s3/ec2/cloudwatch, paginator names, S3 transfer helpers), so new
calls written by anyone are checked as they land.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
from functools import lru_cache

import botocore.session
from botocore import xform_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF = os.path.join(ROOT, "infra", "terraform")
SCANNED = ("shared", "webserver", "worker", "autoscaler", "classifycloud")
SERVICES = {"sqs": "sqs", "s3": "s3", "ec2": "ec2", "cloudwatch": "cloudwatch", "dynamodb": "dynamodb",
            "autoscaling": "autoscaling"}  # botocore name -> IAM prefix
TRANSFER = {"upload_file": ["s3:PutObject"], "upload_fileobj": ["s3:PutObject"],
            "download_file": ["s3:GetObject"], "download_fileobj": ["s3:GetObject"]}
# Operations whose IAM action is not "<prefix>:<OperationName>".
SPECIAL = {
    "ListObjectsV2": ["s3:ListBucket"], "ListObjects": ["s3:ListBucket"], "HeadBucket": ["s3:ListBucket"],
    "HeadObject": ["s3:GetObject"], "DeleteObjects": ["s3:DeleteObject"],
    "ListObjectVersions": ["s3:ListBucketVersions"],
    "CopyObject": ["s3:GetObject", "s3:PutObject"], "CreateMultipartUpload": ["s3:PutObject"],
    "UploadPart": ["s3:PutObject"], "CompleteMultipartUpload": ["s3:PutObject"],
    "SendMessageBatch": ["sqs:SendMessage"], "DeleteMessageBatch": ["sqs:DeleteMessage"],
    "ChangeMessageVisibilityBatch": ["sqs:ChangeMessageVisibility"],
}
ALL = ("web", "worker", "autoscaler")
# Who runs the code in each file (longest matching path prefix wins).
ROLE_OF_PATH = {
    "webserver/": ("web",),
    "worker/": ("worker",),
    "autoscaler/": ("autoscaler",),
    "shared/metrics.py": ALL,                        # every component publishes metrics
    "classifycloud/report/": ("operator",),          # `classifycloud metrics`, on an operator's machine
    "webserver/keys.py": ("web",),                   # API-key lookup and quota counter
    "webserver/usage.py": ("web",),                  # the usage log writer
    "classifycloud/keyadmin.py": ("operator",),      # `classifycloud keys`
    "classifycloud/usage_report.py": ("operator",),  # `classifycloud usage`
    "classifycloud/dlq.py": ("operator",),           # `classifycloud dlq list|redrive`, on an operator's machine
    "ami/scripts/classifycloud-sync-models.sh": ("worker",),
    "shared/live_catalogue.py": ALL,                 # every component reads the live catalogue (S3 entries)
    "shared/heartbeats.py": ("web", "autoscaler"),   # the web's probes and the autoscaler read worker heartbeats
    "shared/service_queues.py": ("autoscaler", "operator"),  # creates the queue of a service added live
    "shared/transport.py": ALL,                      # every component's queue calls (checked per method: below)
    "classifycloud/publish.py": ("operator",),       # `classifycloud train` publishes with the operator's rights
    "shared/batches.py": ("web", "autoscaler"),      # the web records batches; the driver (autoscaler) runs them
    "shared/grants.py": ("autoscaler",),
    "shared/quota.py": ("web", "autoscaler"),        # the web's quota blocks; the driver charges a batch's items               # the driver re-reads a batch key's granted locations
    "shared/notify.py": ("web", "autoscaler"),       # the web queues notices and secrets; the driver delivers
    "shared/traffic.py": ("web", "autoscaler", "operator"),  # web reads traffic.json; controller and CLI write it
    "shared/version_entries.py": ("worker", "operator"),     # workers load versions; `classifycloud versions` checks
}
# Code that never runs under an instance role, with the reason.
NOT_DEPLOYED = {
    "classifycloud/provision.py": "creates queues/bucket for the local stack and `classifycloud provision`; "
                           "in AWS Terraform creates them",
    "classifycloud/local.py": "the embedded local stack (moto)",
    "classifycloud/cli.py": "`up`/`provision` commands of the local stack",
    "classifycloud/train.py": "`classifycloud train` reads a dataset prefix from an operator's machine",
}
# Libraries whose AWS calls are made on behalf of their callers: each method's operations are
# charged to the files that call the method (self.transport.send(...) -> send_message in that
# file), so every role is checked for exactly the queue operations it uses, not all of them.
BROKERED = {"shared/transport.py": ("Transport", "QueueConsumer")}
# A call is a brokered one when its receiver names the transport or one of its queue consumers.
BROKER_RECEIVER = re.compile(r"transport|queue", re.I)
# Actions that have no resource-level permissions in IAM: the only ones allowed on "*".
NO_RESOURCE_LEVEL = {"sqs:ListQueues", "cloudwatch:PutMetricData", "cloudwatch:GetMetricStatistics", "cloudwatch:GetMetricData",
                     "cloudwatch:ListMetrics", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus",
                     "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances"}


@lru_cache(maxsize=1)
def operation_actions() -> dict[str, list[list[str]]]:
    """snake_case method name -> candidate IAM action lists (one per service that has the operation)."""
    session = botocore.session.get_session()
    out: dict[str, list[list[str]]] = {}
    for svc, prefix in SERVICES.items():
        for op in session.get_service_model(svc).operation_names:
            out.setdefault(xform_name(op), []).append(SPECIAL.get(op, [f"{prefix}:{op}"]))
    for name, actions in TRANSFER.items():
        out[name] = [actions]
    return out


def calls_in_source(source: str) -> set[str]:
    """AWS operation names called in Python source: client.method(...), get_paginator('op')."""
    ops = operation_actions()
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in ops:
                found.add(name)
            if name in ("get_paginator", "get_waiter") and node.args and isinstance(node.args[0], ast.Constant):
                found.add(node.args[0].value)
    return found


def broker_methods(root: str = ROOT) -> dict[str, set[str]]:
    """{method name: AWS operations it makes} for the brokered classes: direct client calls, operation
    names passed as strings (the batched calls go through getattr), and the methods it uses (self.m,
    self.transport.m), followed through."""
    ops = operation_actions()
    direct: dict[tuple[str, str], set[str]] = {}
    uses: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for rel, classes in BROKERED.items():
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in classes):
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
                key = (cls.name, fn.name)
                found, used = direct.setdefault(key, set()), uses.setdefault(key, set())
                for node in ast.walk(fn):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ops:
                        found.add(node.value)
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ops:
                        found.add(node.func.attr)
                    if isinstance(node, ast.Attribute):
                        owner = ast.unparse(node.value)
                        if owner == "self":
                            used.add((cls.name, node.attr))
                        elif owner.endswith("transport"):
                            used.add(("Transport", node.attr))
    out: dict[str, set[str]] = {}
    for start in direct:
        seen, todo = set(), [start]
        while todo:
            key = todo.pop()
            if key in seen or key not in direct:
                continue
            seen.add(key)
            out.setdefault(start[1], set()).update(direct[key])
            todo.extend(uses[key])
    return out


def brokered_calls(source: str, methods: dict[str, set[str]]) -> set[str]:
    """AWS operations a file makes through the transport: transport.send(...), queue.receive(...)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods
                and BROKER_RECEIVER.search(ast.unparse(node.func.value))):
            found |= methods[node.func.attr]
    return found


def scan(root: str = ROOT) -> dict[str, set[str]]:
    """{relative path: operations} for the Python packages and the Python embedded in ami/scripts."""
    out = {}
    methods = broker_methods(root)
    for top in SCANNED:
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    rel = os.path.relpath(path, root)
                    source = open(path, encoding="utf-8").read()
                    found = calls_in_source(source)
                    if rel not in BROKERED:
                        found |= brokered_calls(source, methods)
                    if found:
                        out[rel] = found
    scripts = os.path.join(root, "ami", "scripts")
    for name in sorted(os.listdir(scripts)) if os.path.isdir(scripts) else []:
        text = open(os.path.join(scripts, name), encoding="utf-8").read()
        for body in re.findall(r"<<'PY'\n(.*?)\nPY\n", text, re.S):
            found = calls_in_source(body)
            if found:
                out.setdefault(f"ami/scripts/{name}", set()).update(found)
    return out


def roles_of(path: str) -> tuple[str, ...] | None:
    best = max((p for p in ROLE_OF_PATH if path.startswith(p)), key=len, default=None)
    return ROLE_OF_PATH[best] if best else None


def _tool():
    spec = importlib.util.spec_from_file_location("tf_hcl", os.path.join(ROOT, "tools", "tf_hcl.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=1)
def role_statements() -> dict[str, list[dict]]:
    """{role: [Allow statements]} from iam*.tf: role policies by their role, the operator managed policy."""
    tool = _tool()
    doc, bodies = tool.load_tf_files(TF, "iam*.tf"), tool.policy_documents(TF, "iam*.tf")

    def statements(name: str) -> list[dict]:
        """A document's statements, those of its source_policy_documents first (as Terraform merges them)."""
        body = bodies[name]
        sources = [re.fullmatch(tool.DOCUMENT_REFERENCE, ref).group(1)
                   for ref in body.get("source_policy_documents", [])]
        return [st for src in sources for st in statements(src)] + body.get("statement", [])

    documents = {name: statements(name) for name in bodies}
    out: dict[str, list[dict]] = {}
    for entry in doc["resource"]:
        for rtype, named in entry.items():
            for _name, body in named.items():
                if rtype not in ("aws_iam_role_policy", "aws_iam_policy"):
                    continue
                policy = re.fullmatch(tool.DOCUMENT_REFERENCE, body["policy"]).group(1)
                if rtype == "aws_iam_role_policy":
                    role = re.search(r'component\["(\w+)"\]', body["role"]).group(1)
                else:
                    role = "operator"
                out.setdefault(role, []).extend(s for s in documents[policy] if s.get("effect", "Allow") == "Allow")
    return out


def granted(role: str) -> set[str]:
    return {a for s in role_statements().get(role, []) for a in s["actions"]}


def ungranted(found: dict[str, set[str]]) -> list[str]:
    """'path: op -> actions not granted to role' for every call the roles do not cover."""
    problems = []
    for path, ops in sorted(found.items()):
        if path in NOT_DEPLOYED or path in BROKERED:   # a brokered file's calls are checked at its callers
            continue
        roles = roles_of(path)
        if roles is None:
            problems.append(f"{path}: calls {sorted(ops)} but is mapped to no role (add it to ROLE_OF_PATH)")
            continue
        for op in sorted(ops):
            candidates = operation_actions()[op]
            for role in roles:
                if not any(set(actions) <= granted(role) for actions in candidates):
                    problems.append(f"{path}: {op} needs {candidates} for role {role}")
    return problems


def test_the_scan_finds_the_calls_each_component_is_known_to_make():
    found = scan()
    web = set().union(*(ops for p, ops in found.items() if p.startswith("webserver/")))
    worker = set().union(*(ops for p, ops in found.items() if p.startswith("worker/")))
    autoscaler = set().union(*(ops for p, ops in found.items() if p.startswith("autoscaler/")))
    assert {"send_message", "create_queue", "delete_queue", "receive_message", "put_object"} <= web
    assert {"receive_message", "get_object", "put_object"} <= worker
    assert {"delete_message", "delete_message_batch"} & worker     # through the transport: batched
    assert {"run_instances", "terminate_instances", "describe_instances", "get_queue_attributes"} <= autoscaler
    assert "put_metric_data" in found["shared/metrics.py"]


def test_every_aws_call_in_the_code_is_granted_to_the_role_that_makes_it():
    assert ungranted(scan()) == []


def test_a_new_ungranted_call_is_reported(tmp_path):
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "purge.py").write_text("def drain(sqs, url):\n    sqs.purge_queue(QueueUrl=url)\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "extra.py").write_text("def f(s3):\n    return s3.get_paginator('list_buckets')\n")
    problems = ungranted(scan(str(tmp_path)))
    assert any("worker/purge.py: purge_queue needs [['sqs:PurgeQueue']] for role worker" in p for p in problems)
    assert any("shared/extra.py" in p and "mapped to no role" in p for p in problems)


def test_no_allow_statement_uses_a_wildcard_action_or_a_star_resource_where_iam_can_scope():
    for role, statements in role_statements().items():
        for s in statements:
            assert not any("*" in a for a in s["actions"]), f"{role} {s.get('sid')}: wildcard action"
            if "*" in s["resources"]:
                assert set(s["actions"]) <= NO_RESOURCE_LEVEL, f"{role} {s.get('sid')}: '*' resource"


def _statements(role: str, action: str) -> list[dict]:
    return [s for s in role_statements()[role] if action in s["actions"]]


def test_worker_sends_only_to_reply_queues_and_reads_only_uploads_models_results_galleries():
    (send,) = _statements("worker", "sqs:SendMessage")
    assert send["resources"] == ["${local.reply_queue_arns}"]
    reads = {r for s in _statements("worker", "s3:GetObject") for r in s["resources"]}
    assert {r.rsplit("/", 1)[0].rsplit("}", 1)[1] for r in reads} == {"/uploads", "/models", "/results", "/galleries"}
    writes = {r for s in _statements("worker", "s3:PutObject") for r in s["resources"]}
    assert {r.rsplit("/", 1)[0].rsplit("}", 1)[1] for r in writes} == {"/results", "/heartbeats", "/galleries", "/failures",
                                                                       "/version-stats", "/shadow"}


def test_web_creates_and_deletes_only_queues_under_the_reply_prefix():
    for action in ("sqs:CreateQueue", "sqs:DeleteQueue"):
        (stmt,) = _statements("web", action)
        assert stmt["resources"] == ["${local.reply_queue_arns}"]


def test_autoscaler_launches_only_from_the_worker_template_with_pool_tags_and_terminates_only_the_pool():
    runs = _statements("autoscaler", "ec2:RunInstances")
    assert runs and all(
        any(c["variable"] == "ec2:LaunchTemplate" and c["values"] == ["${aws_launch_template.worker.arn}"]
            for c in s["condition"]) for s in runs)
    instance = [s for s in runs if any(r.endswith(":instance/*}") or r.endswith(":instance/*") for r in s["resources"])]
    assert instance and all(any(c["variable"] == "aws:RequestTag/${var.pool_tag_key}" for c in s["condition"])
                            for s in instance)
    (terminate,) = _statements("autoscaler", "ec2:TerminateInstances")
    assert terminate["condition"][0]["variable"] == "aws:ResourceTag/${var.pool_tag_key}"
    assert terminate["condition"][0]["values"] == ["${local.pool_tag_value}"]
    (pass_role,) = _statements("autoscaler", "iam:PassRole")
    assert pass_role["resources"] == ['${aws_iam_role.component["worker"].arn}']
    (tag,) = _statements("autoscaler", "ec2:CreateTags")
    assert tag["condition"][0]["values"] == ["RunInstances"]


def test_metrics_may_be_put_only_into_our_namespace():
    for role in ALL:
        (stmt,) = _statements(role, "cloudwatch:PutMetricData")
        assert stmt["condition"][0]["variable"] == "cloudwatch:namespace"
        assert stmt["condition"][0]["values"] == ["${var.metrics_namespace}"]


def test_web_reaches_dynamodb_only_for_the_key_and_usage_calls_it_makes():
    dynamo = {a for a in granted("web") if a.startswith("dynamodb:")}
    assert dynamo == {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem"}
    by_resource = {tuple(s["resources"]): set(s["actions"]) for s in role_statements()["web"]
                   if any(a.startswith("dynamodb:") for a in s["actions"])}
    assert by_resource == {("${aws_dynamodb_table.api_keys.arn}",): {"dynamodb:GetItem", "dynamodb:UpdateItem"},
                           ("${aws_dynamodb_table.usage.arn}",): {"dynamodb:BatchWriteItem"}}


def test_the_batch_driver_reads_key_records_and_charges_batch_items_and_touches_no_other_table():
    dynamo = {a for a in granted("autoscaler") if a.startswith("dynamodb:")}
    assert dynamo == {"dynamodb:GetItem", "dynamodb:UpdateItem"}
    (stmt,) = _statements("autoscaler", "dynamodb:UpdateItem")
    assert stmt["resources"] == ["${aws_dynamodb_table.api_keys.arn}"]


def test_only_the_autoscaler_creates_queues_besides_web_reply_queues_and_only_request_and_bulk_queues():
    created = sorted(s["resources"] for s in _statements("autoscaler", "sqs:CreateQueue"))
    assert created == ["${local.bulk_queue_arns}", "${local.request_queue_arns}"]
    arns = _tool().load_tf(os.path.join(TF, "iam.tf"))["locals"][0]
    assert arns["request_queue_arns"] == ["${local.sqs_arn_base}:${var.prefix}-requests-*"]
    assert arns["bulk_queue_arns"] == ["${local.sqs_arn_base}:${var.prefix}-bulk-*"]
    assert not _statements("worker", "sqs:CreateQueue")


def test_web_and_autoscaler_read_service_entries_and_traffic_policies_but_not_weights():
    for role in ("web", "autoscaler"):
        reads = {r for s in _statements(role, "s3:GetObject") for r in s["resources"]}
        models = {r for r in reads if "/models/" in r}
        assert models == {"${aws_s3_bucket.data.arn}/models/*/entry.yaml",
                          "${aws_s3_bucket.data.arn}/models/*/traffic.json"}, role


def test_group_actions_are_scoped_to_the_worker_groups():
    for role, actions in (("worker", ("autoscaling:SetInstanceProtection",
                                      "autoscaling:TerminateInstanceInAutoScalingGroup")),
                          ("autoscaler", ("autoscaling:SetDesiredCapacity",
                                          "autoscaling:TerminateInstanceInAutoScalingGroup"))):
        for action in actions:
            (stmt,) = _statements(role, action)
            assert stmt["resources"] == "${local.worker_group_arns}", (role, action)
    assert not _statements("web", "autoscaling:SetDesiredCapacity")
    assert not _statements("worker", "autoscaling:SetDesiredCapacity")     # workers never size the fleet


def test_autoscaler_janitor_may_delete_only_reply_queues():
    (delete,) = _statements("autoscaler", "sqs:DeleteQueue")
    assert delete["resources"] == ["${local.reply_queue_arns}"]
    (tags,) = _statements("autoscaler", "sqs:ListQueueTags")
    assert tags["resources"] == ["${local.reply_queue_arns}"]


# --- bulk jobs (issue 23) and model versions (issue 24) ---------------------------------------------------

BUCKET = "${aws_s3_bucket.data.arn}/"


def _sqs_resources(role: str, action: str) -> set[str]:
    out = set()
    for s in _statements(role, action):
        out |= {s["resources"]} if isinstance(s["resources"], str) else set(s["resources"])
    return out


def _s3_prefixes(role: str, action: str) -> set[str]:
    """The data-bucket key patterns a role may use an S3 object action on."""
    return {r[len(BUCKET):] for s in _statements(role, action) for r in s["resources"] if r.startswith(BUCKET)}


def _list_prefixes(role: str) -> set[str]:
    return {v for s in _statements(role, "s3:ListBucket") for c in s.get("condition", [])
            if c["variable"] == "s3:prefix" for v in c["values"]}


def test_only_the_autoscaler_role_sends_to_bulk_queues_and_only_workers_take_from_them():
    bulk = "${local.bulk_queue_arns}"
    assert bulk in _sqs_resources("autoscaler", "sqs:SendMessage")
    assert bulk not in _sqs_resources("web", "sqs:SendMessage")       # the web records batches, never items
    assert bulk not in _sqs_resources("worker", "sqs:SendMessage")    # workers answer by result records
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
        assert bulk in _sqs_resources("worker", action), action
        assert bulk not in _sqs_resources("web", action), action
        assert bulk not in _sqs_resources("autoscaler", action), action   # the driver reads only the DLQs
    assert _sqs_resources("autoscaler", "sqs:ReceiveMessage") >= {"${local.bulk_dlq_arns}"}
    arns = _tool().load_tf(os.path.join(TF, "iam.tf"))["locals"][0]
    assert arns["bulk_dlq_arns"] == ["${local.sqs_arn_base}:${var.prefix}-bulk-*-dlq"]
    web_queues = {r for s in role_statements()["web"] if any(a.startswith("sqs:") for a in s["actions"])
                  for r in ([s["resources"]] if isinstance(s["resources"], str) else s["resources"])}
    assert not any("bulk" in r for r in web_queues)                   # no bulk queue action at all


def test_web_writes_batch_records_and_notices_but_not_batch_io_results_or_delivered_notices():
    assert _s3_prefixes("web", "s3:PutObject") == {"uploads/*", "jobs/*", "batches/*", "batches-active/*",
                                                  "notify/secrets/*", "notify/pending/*"}
    reads = _s3_prefixes("web", "s3:GetObject")
    assert {"batches/*", "notify/secrets/*", "notify/pending/*", "notify/done/*"} <= reads
    # of batch-io/ the web reads output shards only (GET /batches/<id>/results/<n>), never photos
    assert {p for p in reads if p.startswith("batch-io/")} == {"batch-io/*/part-*.jsonl"}
    assert not any(p.startswith("batch-io/") for p in _s3_prefixes("web", "s3:PutObject"))
    assert not _s3_prefixes("web", "s3:DeleteObject") - {"galleries/*", "uploads/*"}   # never an active marker


def test_the_batch_driver_reads_and_writes_exactly_the_prefixes_the_code_uses():
    puts, gets = _s3_prefixes("autoscaler", "s3:PutObject"), _s3_prefixes("autoscaler", "s3:GetObject")
    assert {"batches/*", "notify/*", "batch-io/*", "results/*"} <= puts
    assert {"batches/*", "notify/*", "batch-io/*", "results/*"} <= gets
    assert _s3_prefixes("autoscaler", "s3:DeleteObject") == {"batches-active/*", "notify/pending/*", "results/*"}
    assert {"batches-active/*", "notify/pending/*", "results/*", "batch-io/*"} <= _list_prefixes("autoscaler")
    assert not any(p.startswith(("uploads/", "galleries/")) for p in puts | gets)


def test_sns_notices_may_go_only_to_topics_of_this_account_and_region():
    (stmt,) = _statements("autoscaler", "sns:Publish")
    assert stmt["resources"] == "${local.client_topic_arns}"
    arns = _tool().load_tf(os.path.join(TF, "iam.tf"))["locals"][0]
    assert arns["client_topic_arns"] == ["arn:${local.partition}:sns:${local.region}:${local.account_id}:*"]
    for role in ("web", "worker", "operator"):
        assert not _statements(role, "sns:Publish"), role


def test_model_version_grants_follow_docs_versions():
    assert {"version-stats/*", "shadow/*"} <= _s3_prefixes("worker", "s3:PutObject")
    assert "models/*" in _s3_prefixes("worker", "s3:GetObject")        # models/<svc>/versions/<v>/...
    assert "models/*/traffic.json" in _s3_prefixes("autoscaler", "s3:PutObject")
    assert "version-stats/*" in _s3_prefixes("autoscaler", "s3:GetObject")
    assert "version-stats/*" in _list_prefixes("autoscaler")
    assert "models/*" in _s3_prefixes("operator", "s3:PutObject")      # `classifycloud versions` writes traffic.json
    assert not any(p.startswith("models/") for p in _s3_prefixes("web", "s3:PutObject"))
    assert not any(p.startswith("models/") for p in _s3_prefixes("worker", "s3:PutObject"))
    assert not _s3_prefixes("autoscaler", "s3:PutObject") & {"models/*", "models/*/entry.yaml"}
