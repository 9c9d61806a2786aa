"""What the deployment suite needs around moto: the override files for moto's gaps, and what is left in the account.

moto differs from AWS in a few places that the real provider trips over. Each difference is
handled here and only here, by a `*_override.tf` file written into the test's scratch copy of
infra/terraform (Terraform merges override files into the resources they name). What AWS gets
from infra/terraform is never changed to suit moto.
"""
from __future__ import annotations

import os

REDRIVE_ALLOW = (
    "moto never returns RedriveAllowPolicy from GetQueueAttributes, and the provider waits for it to read back "
    "forever: the apply hangs (at low parallelism the stuck resources hold every slot). No redrive-allow "
    "policies in moto (request and bulk DLQs); AWS gets them (modules/service_queue).")
REDRIVE_POLICY = (
    "moto re-serialises RedrivePolicy (maxReceiveCount as a string, other spacing): every plan would update "
    "the request queues, and moto's SetQueueAttributes clears a queue's Policy when the call does not carry "
    "it, so the second apply would wipe the queue policies (only the web sends requests, only the autoscaler "
    "sends batch items): request and bulk queues alike.")
# file name (in the root module, or a path below it for a child module's resources: an override file
# overrides only its own module) -> (why, HCL). The file starts with its reason as a comment.
MOTO_OVERRIDES: dict[str, tuple[str, str]] = {
    "modules/service_queue/moto_sqs_redrive_allow_override.tf": (
        REDRIVE_ALLOW, 'resource "aws_sqs_queue_redrive_allow_policy" "dlq" {\n  for_each = {}\n}\n'),
    "moto_launch_template_tags_override.tf": (
        "moto echoes the provider's default tags back as a tag_specifications block of resource type "
        "\"launch-template\": every plan would write a new template version, and the groups' launch_template "
        "version (latest_version) with it, which starts an instance refresh moto does not implement.",
        'resource "aws_launch_template" "worker" {\n  lifecycle {\n    ignore_changes = [tag_specifications]\n'
        '  }\n}\n\nresource "aws_launch_template" "service" {\n  lifecycle {\n'
        '    ignore_changes = [tag_specifications]\n  }\n}\n'),
    "modules/service_queue/moto_sqs_redrive_policy_override.tf": (
        REDRIVE_POLICY, 'resource "aws_sqs_queue" "queue" {\n  lifecycle {\n    ignore_changes = [redrive_policy]\n'
                        '  }\n}\n'),
    "moto_security_group_rule_override.tf": (
        "moto drops the description of a security group rule that references another group: every plan would "
        "update the two rules between the ALB and the web tier.",
        'resource "aws_vpc_security_group_ingress_rule" "web_from_alb" {\n  lifecycle {\n'
        '    ignore_changes = [description]\n  }\n}\n\n'
        'resource "aws_vpc_security_group_egress_rule" "alb_to_web" {\n  lifecycle {\n'
        '    ignore_changes = [description]\n  }\n}\n'),
    "moto_s3_bucket_policy_override.tf": (
        "moto's endpoint is plain HTTP on loopback, so aws:SecureTransport is false for every call there and "
        "moto enforces the bucket policy's DenyInsecureTransport: the stack's own uploads would get 403. In AWS "
        "the SDKs reach S3 over HTTPS only and the policy denies nothing of theirs. No bucket policy in moto.",
        'resource "aws_s3_bucket_policy" "data" {\n  count = 0\n}\n'),
    "moto_s3_path_style_override.tf": (
        "moto listens on 127.0.0.1, where <bucket>.127.0.0.1 does not resolve: S3 addressed by path, as every "
        "local S3 endpoint needs. Not skip_requesting_account_id: with it the ARNs the provider builds lose the "
        "account, and those broken ARNs would reach the autoscaler's IAM policy.",
        'provider "aws" {\n  s3_use_path_style = true\n}\n'),
}


def write_overrides(module: str, overrides: dict[str, tuple[str, str]] = MOTO_OVERRIDES) -> list[str]:
    """Write every override file, each headed by its reason, into the scratch root module; returns their names."""
    for name, (why, hcl) in overrides.items():
        words, lines, line = why.split(), [], "#"
        for word in words:
            if len(line) + len(word) > 100:
                lines.append(line)
                line = "#"
            line += " " + word
        lines.append(line)
        with open(os.path.join(module, name), "w") as fh:
            fh.write("# moto only (tests/moto_terraform.py), never in infra/terraform:\n" + "\n".join(lines) + "\n\n"
                     + hcl)
    return sorted(overrides)


def empty_bucket(s3, bucket: str) -> int:
    """Delete every object version and delete marker (the bucket is versioned; destroy needs it empty)."""
    deleted = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


def leftovers(clients) -> dict[str, list[str]]:
    """Everything of the kinds the stack creates that still exists (the default VPC and its parts excepted).

    `clients(service)` returns a boto3 client for the moto endpoint. Customer KMS keys count while they are
    not scheduled for deletion (AWS never deletes a key at once either).
    """
    ec2, out = clients("ec2"), {}
    default_vpcs = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v.get("IsDefault")}

    def ours(items, vpc_key="VpcId"):
        return [i for i in items if i.get(vpc_key) not in default_vpcs]

    out["vpcs"] = [v["VpcId"] for v in ours(ec2.describe_vpcs()["Vpcs"])]
    out["subnets"] = [s["SubnetId"] for s in ours(ec2.describe_subnets()["Subnets"])]
    out["security_groups"] = [g["GroupId"] for g in ours(ec2.describe_security_groups()["SecurityGroups"])]
    out["route_tables"] = [r["RouteTableId"] for r in ours(ec2.describe_route_tables()["RouteTables"])]
    out["internet_gateways"] = [g["InternetGatewayId"] for g in ec2.describe_internet_gateways()["InternetGateways"]
                                if any(a["VpcId"] not in default_vpcs for a in g.get("Attachments", []))
                                or not g.get("Attachments")]
    out["nat_gateways"] = [n["NatGatewayId"] for n in ec2.describe_nat_gateways()["NatGateways"]
                           if n["State"] not in ("deleted", "deleting")]
    out["addresses"] = [a.get("AllocationId", a.get("PublicIp")) for a in ec2.describe_addresses()["Addresses"]]
    out["vpc_endpoints"] = [e["VpcEndpointId"] for e in ec2.describe_vpc_endpoints()["VpcEndpoints"]
                            if e["State"].lower() not in ("deleted", "deleting")]
    out["flow_logs"] = [f["FlowLogId"] for f in ec2.describe_flow_logs()["FlowLogs"]]
    out["launch_templates"] = [t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]]
    out["instances"] = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                        if i["State"]["Name"] not in ("terminated", "shutting-down")]
    out["auto_scaling_groups"] = [g["AutoScalingGroupName"] for g in
                                  clients("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]]
    elb = clients("elbv2")
    out["load_balancers"] = [lb["LoadBalancerName"] for lb in elb.describe_load_balancers()["LoadBalancers"]]
    out["target_groups"] = [t["TargetGroupName"] for t in elb.describe_target_groups()["TargetGroups"]]
    out["queues"] = clients("sqs").list_queues().get("QueueUrls", [])
    out["buckets"] = [b["Name"] for b in clients("s3").list_buckets()["Buckets"]]
    iam = clients("iam")
    out["iam_roles"] = [r["RoleName"] for r in iam.list_roles()["Roles"]
                        if not r["Path"].startswith("/aws-service-role/")]
    out["iam_instance_profiles"] = [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]]
    out["iam_policies"] = [p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]]
    kms = clients("kms")
    keys = [kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"] for k in kms.list_keys()["Keys"]]
    aliases = kms.list_aliases()["Aliases"]
    # AWS-managed keys (alias/aws/dynamodb, alias/aws/ebs) come with the account's use of a service, not
    # with the stack; moto labels them CUSTOMER, so they are known by their alias/aws/ alias
    aws_managed = {a.get("TargetKeyId") for a in aliases if a["AliasName"].startswith("alias/aws/")}
    out["kms_keys"] = [f"{k['KeyId']} ({k['KeyState']}: {k.get('Description', '')})" for k in keys
                       if k.get("KeyManager") == "CUSTOMER" and k["KeyId"] not in aws_managed
                       and k["KeyState"] != "PendingDeletion"]
    out["kms_aliases"] = [a["AliasName"] for a in aliases if not a["AliasName"].startswith("alias/aws/")]
    out["log_groups"] = [g["logGroupName"] for g in clients("logs").describe_log_groups()["logGroups"]]
    cloudwatch = clients("cloudwatch")
    out["alarms"] = [a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]]
    out["dashboards"] = [d["DashboardName"] for d in cloudwatch.list_dashboards()["DashboardEntries"]]
    sns = clients("sns")
    out["sns_topics"] = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    out["sns_subscriptions"] = [s["SubscriptionArn"] for s in sns.list_subscriptions()["Subscriptions"]]
    out["dynamodb_tables"] = clients("dynamodb").list_tables()["TableNames"]
    return {kind: names for kind, names in out.items() if names}
