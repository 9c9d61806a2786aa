# The autoscaler's grants (iam.tf: its role): queue depths, dead letters, the janitor, the batch
# driver and the version controller; the worker groups; and, for fleet = "ec2" only, RunInstances.

resource "aws_iam_role_policy" "autoscaler" {
  name   = "${var.prefix}-autoscaler"
  role   = aws_iam_role.component["autoscaler"].id
  policy = data.aws_iam_policy_document.autoscaler.json
}

data "aws_iam_policy_document" "autoscaler" {
  source_policy_documents = [
    data.aws_iam_policy_document.bucket_listing["autoscaler"].json,
    data.aws_iam_policy_document.read_catalogue.json,
    data.aws_iam_policy_document.put_metrics.json,
  ]

  statement {
    sid       = "ReadQueueDepth"
    actions   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
    resources = local.request_queue_arns
  }

  # A service added by an S3 entry alone gets its request queue and DLQ here; only under the requests- prefix.
  # CreateQueue only: SetQueueAttributes could rewrite a queue's policy (who may send to it); an existing
  # queue's attributes are reconciled by an operator (classifycloud provision / train), not by this role.
  statement {
    sid       = "CreateServiceQueues"
    actions   = ["sqs:CreateQueue"]
    resources = local.request_queue_arns
  }

  # Bulk queues: the batch driver (a thread of this process, autoscaler/batches.py) sends batch items and
  # the loop reads their depth; a service added later gets its bulk queue and DLQ at its first batch
  # (shared/service_queues.py ensure_bulk_queue). CreateQueue only, as for request queues above.
  statement {
    sid       = "SendBatchItems"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
    resources = local.bulk_queue_arns
  }

  statement {
    sid       = "CreateBulkQueues"
    actions   = ["sqs:CreateQueue"]
    resources = local.bulk_queue_arns
  }

  # Dead-lettered batch items get a dead_lettered record so their batch finishes (BulkDeadLetters).
  statement {
    sid       = "ReadBulkDeadLetters"
    actions   = ["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"]
    resources = local.bulk_dlq_arns
  }

  statement {
    sid       = "SendTerminate"
    actions   = ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.terminate.arn]
  }

  # The janitor deletes reply queues whose web process stopped beating (autoscaler/janitor.py).
  statement {
    sid       = "SweepOrphanReplyQueues"
    actions   = ["sqs:ListQueueTags", "sqs:GetQueueAttributes", "sqs:DeleteQueue"]
    resources = [local.reply_queue_arns]
  }

  # Dead-lettered requests end as errors (autoscaler/deadletters.py): read the DLQs, write the
  # dead_lettered result record, answer a waiting web process.
  statement {
    sid       = "ReadDeadLetters"
    actions   = ["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"]
    resources = module.request_queues.dlq_arns
  }

  statement {
    sid       = "AnswerDeadLettered"
    actions   = ["sqs:SendMessage"]
    resources = [local.reply_queue_arns]
  }

  # results and failures; a job's marker (jobs/<id>.json): the notifier ends a cancelled or timed-out job
  statement {
    sid       = "ReadResultsFailuresAndJobs"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/results/*", "${aws_s3_bucket.data.arn}/failures/*", "${aws_s3_bucket.data.arn}/jobs/*"]
  }

  statement {
    sid       = "WriteDeadLetteredRecords"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/results/*"]
  }

  # The batch driver (shared/batches.py): batch.json, inputs.jsonl, tally.json and the cancel marker;
  # the active markers it lists and drops when a batch is final; the outbox it delivers and moves
  # (notify/pending/ -> notify/done/) and the webhook secrets it signs with (made on first use);
  # a key's own input and output folder in the data bucket (batch-io/<key id>/: listed, manifests and
  # items read, the latter presigned for workers, output shards written). Item records are results/*.
  statement {
    sid     = "DriveBatches"
    actions = ["s3:GetObject", "s3:PutObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/batches/*",
      "${aws_s3_bucket.data.arn}/notify/*",
      "${aws_s3_bucket.data.arn}/batch-io/*",
    ]
  }

  # The batch locations and topics the operator granted to a batch's key (shared/grants.py): read again
  # by the driver before it touches a customer bucket, so a withdrawn grant stops running batches too;
  # and a batch's items charged to the key's monthly counter with one conditional UpdateItem (shared/quota.py).
  statement {
    sid       = "ReadKeyGrantsChargeBatchItems"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.api_keys.arn]
  }

  statement {
    sid     = "FinishBatchesAndNotices"
    actions = ["s3:DeleteObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/batches-active/*",
      "${aws_s3_bucket.data.arn}/notify/pending/*",
      "${aws_s3_bucket.data.arn}/results/*", # a batch item's link_expired record, answered again
    ]
  }

  # Notices to the SNS topics a client names (autoscaler/notify.py). Topics are the client's choice, so
  # the grant is by account: only topics of this account and region (docs/DEPLOY.md).
  statement {
    sid       = "PublishClientNotices"
    actions   = ["sns:Publish"]
    resources = local.client_topic_arns
  }

  # Model versions (issue 24): the controller reads workers' per-version outcomes and rolls a
  # failing canary back by rewriting the service's traffic policy (autoscaler/versions.py).
  statement {
    sid       = "ReadVersionStats"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/version-stats/*"]
  }

  statement {
    sid       = "RollBackTraffic"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/models/*/traffic.json"]
  }

  # ListQueues has no resource-level permissions; the janitor lists only the reply prefix.
  statement {
    sid       = "ListReplyQueues"
    actions   = ["sqs:ListQueues"]
    resources = ["*"]
  }

  statement {
    sid       = "SeeFleet"
    actions   = ["ec2:DescribeInstances", "ec2:DescribeInstanceStatus"]
    resources = ["*"] # Describe* calls have no resource-level permissions.
  }

  statement {
    sid       = "ReadHeartbeats"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/heartbeats/*"]
  }

  statement {
    sid       = "ReadOwnMetrics"
    actions   = ["cloudwatch:GetMetricStatistics", "cloudwatch:GetMetricData"]
    resources = ["*"] # read-only metric queries have no resource-level permissions.
  }

  statement {
    sid       = "ShipLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [local.log_group_arns["autoscaler"]]
  }
}

data "aws_iam_policy_document" "autoscaler_fleet" {
  # autoscaler/fleet/asg.py: scale-out = desired capacity up; replace/terminate broken instances.
  statement {
    sid       = "SetWorkerCapacity"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = local.worker_group_arns
  }

  statement {
    sid       = "SeeWorkerGroups"
    actions   = ["autoscaling:DescribeAutoScalingGroups"]
    resources = ["*"] # Describe* calls have no resource-level permissions.
  }
}

resource "aws_iam_role_policy" "autoscaler_fleet" {
  name   = "${var.prefix}-autoscaler-fleet"
  role   = aws_iam_role.component["autoscaler"].id
  policy = data.aws_iam_policy_document.autoscaler_fleet.json
}

# RunInstances statements of the ec2 fleet: every one only from the worker template; every resource but the
# template itself only as the template names it (IsLaunchTemplateResource: nothing overridden in the call),
# so this stack's AMI, worker security group, private subnets and instance type, with the pool tag.
locals {
  from_worker_template = { test = "ArnLike", variable = "ec2:LaunchTemplate", values = [aws_launch_template.worker.arn] }
  as_template_names_it = { test = "Bool", variable = "ec2:IsLaunchTemplateResource", values = ["true"] }

  run_worker_statements = [
    {
      sid        = "RunFromWorkerTemplate"
      resources  = [aws_launch_template.worker.arn]
      conditions = [local.from_worker_template]
    },
    {
      sid = "RunOnlyTemplateResources"
      resources = [
        "arn:${local.partition}:ec2:${local.region}::image/${var.ami_id}",
        aws_security_group.worker.arn,
        "${local.ec2_arn_base}:network-interface/*",
        "${local.ec2_arn_base}:volume/*",
      ]
      conditions = [local.from_worker_template, local.as_template_names_it]
    },
    {
      sid       = "RunInThisStacksSubnets"
      resources = ["${local.ec2_arn_base}:subnet/*"]
      conditions = [
        local.from_worker_template, local.as_template_names_it,
        { test = "ArnEquals", variable = "ec2:Vpc", values = [aws_vpc.main.arn] },
      ]
    },
    # The instance itself: of the template's instance type, carrying the pool tag.
    {
      sid       = "RunTaggedWorkers"
      resources = ["${local.ec2_arn_base}:instance/*"]
      conditions = [
        local.from_worker_template, local.as_template_names_it,
        { test = "StringEquals", variable = "ec2:InstanceType", values = [var.worker_instance_type] },
        { test = "StringEquals", variable = "aws:RequestTag/${var.pool_tag_key}", values = [local.pool_tag_value] },
      ]
    },
  ]
}

# The ec2 fleet only (autoscaler/fleet/ec2.py: run_instances from the worker template, terminate by pool
# tag). Terraform deploys fleet = asg, where the groups launch and the autoscaler needs none of this:
# attached only when autoscaler_fleet = "ec2".
data "aws_iam_policy_document" "autoscaler_ec2_fleet" {
  # RunInstances touches several resource types; each only as the worker template names it (the
  # statements are local.run_worker_statements, their shared conditions written once).
  dynamic "statement" {
    for_each = local.run_worker_statements
    content {
      sid       = statement.value.sid
      actions   = ["ec2:RunInstances"]
      resources = statement.value.resources

      dynamic "condition" {
        for_each = statement.value.conditions
        content {
          test     = condition.value.test
          variable = condition.value.variable
          values   = condition.value.values
        }
      }
    }
  }

  statement {
    sid       = "TagAtLaunchOnly"
    actions   = ["ec2:CreateTags"]
    resources = ["${local.ec2_arn_base}:instance/*", "${local.ec2_arn_base}:volume/*"]

    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
  }

  statement {
    sid       = "TerminatePoolOnly"
    actions   = ["ec2:TerminateInstances"]
    resources = ["${local.ec2_arn_base}:instance/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${var.pool_tag_key}"
      values   = [local.pool_tag_value]
    }
  }

  statement {
    sid       = "PassWorkerRoleOnly"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.component["worker"].arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "autoscaler_ec2_fleet" {
  count = var.autoscaler_fleet == "ec2" ? 1 : 0

  name   = "${var.prefix}-autoscaler-ec2-fleet"
  role   = aws_iam_role.component["autoscaler"].id
  policy = data.aws_iam_policy_document.autoscaler_ec2_fleet.json
}
