# Least privilege, one role per component. Every action the Python code calls is
# checked against these documents by tests/test_infra_iam.py (it scans the code).

# request_queue_arns: every service's request queue (and its DLQ), packaged or added later by
# an S3 entry, granted by name prefix.
locals {
  sqs_arn_base       = "arn:${local.partition}:sqs:${local.region}:${local.account_id}"
  request_queue_arns = ["${local.sqs_arn_base}:${var.prefix}-requests-*"]
  # bulk_queue_arns: every service's bulk queue and bulk DLQ (issue 23), packaged or added later, by prefix.
  bulk_queue_arns = ["${local.sqs_arn_base}:${var.prefix}-bulk-*"]
  bulk_dlq_arns   = ["${local.sqs_arn_base}:${var.prefix}-bulk-*-dlq"]
  # SNS topics a client names in `notify` (docs/API.md): this account and region only, so a key
  # cannot make the stack publish into someone else's account.
  client_topic_arns = ["arn:${local.partition}:sns:${local.region}:${local.account_id}:*"]
  reply_queue_arns  = "${local.sqs_arn_base}:${local.reply_queue_prefix}*"
  log_group_arns    = { for c, name in local.log_group_names : c => "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${name}:*" }
  ec2_arn_base      = "arn:${local.partition}:ec2:${local.region}:${local.account_id}"
  components        = toset(["worker", "web", "autoscaler"])
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "component" {
  for_each = local.components

  name               = "${var.prefix}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_instance_profile" "component" {
  for_each = local.components

  name = "${var.prefix}-${each.key}"
  role = aws_iam_role.component[each.key].name
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each = var.enable_ssm ? local.components : toset([])

  role       = aws_iam_role.component[each.key].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy" "worker" {
  name   = "${var.prefix}-worker"
  role   = aws_iam_role.component["worker"].id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role_policy" "web" {
  name   = "${var.prefix}-web"
  role   = aws_iam_role.component["web"].id
  policy = data.aws_iam_policy_document.web.json
}

resource "aws_iam_role_policy" "autoscaler" {
  name   = "${var.prefix}-autoscaler"
  role   = aws_iam_role.component["autoscaler"].id
  policy = data.aws_iam_policy_document.autoscaler.json
}

# --- statements several roles share (merged in with source_policy_documents) --------------

data "aws_iam_policy_document" "put_metrics" {
  statement {
    sid       = "PutMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource-level permissions; the namespace condition narrows it.

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }
}

# The live catalogue and the fleet's heartbeats: list them, read services' entries (not their weights).
data "aws_iam_policy_document" "read_catalogue" {
  statement {
    sid       = "ListHeartbeatsAndModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["heartbeats/", "heartbeats/*", "models/", "models/*"]
    }
  }

  statement {
    sid       = "ReadServiceEntries"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/models/*/entry.yaml"]
  }
}

# The DynamoDB tables' customer key, only through DynamoDB.
data "aws_iam_policy_document" "use_table_key" {
  statement {
    sid       = "UseTableKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.tables.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["dynamodb.${local.region}.amazonaws.com"]
    }
  }
}

# --- worker --------------------------------------------------------------------

data "aws_iam_policy_document" "worker" {
  source_policy_documents = [data.aws_iam_policy_document.put_metrics.json]

  statement {
    sid = "ConsumeRequests"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
    ]
    resources = local.request_queue_arns
  }

  # Batch items (worker/bulk.py), taken only while the request queues are quiet. No SendMessage: the
  # batch driver alone sends items (queues.tf's bulk queue policy says so too).
  statement {
    sid = "ConsumeBatchItems"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
    ]
    resources = local.bulk_queue_arns
  }

  statement {
    sid       = "SendReplies"
    actions   = ["sqs:SendMessage"]
    resources = [local.reply_queue_arns]
  }

  statement {
    sid = "ObeyTerminate"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueUrl",
    ]
    resources = [aws_sqs_queue.terminate.arn]
  }

  # results/: a redelivered request whose result exists is answered from it (idempotent by id).
  statement {
    sid     = "ReadImagesModelsResults"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/uploads/*",
      "${aws_s3_bucket.data.arn}/models/*",
      "${aws_s3_bucket.data.arn}/results/*",
    ]
  }

  # failures/: the last reason a request failed, read when it is dead-lettered.
  statement {
    sid     = "WriteResultsAndHeartbeats"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/results/*",
      "${aws_s3_bucket.data.arn}/heartbeats/*",
      "${aws_s3_bucket.data.arn}/failures/*",
    ]
  }

  # Model versions (issue 24, docs/VERSIONS.md): per-version outcomes the autoscaler's controller reads
  # (worker/versions.py), and shadow answers (worker/shadow.py). Versions' files are under models/ (read above).
  statement {
    sid     = "WriteVersionStatsAndShadows"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/version-stats/*",
      "${aws_s3_bucket.data.arn}/shadow/*",
    ]
  }

  statement {
    sid       = "RemoveOwnHeartbeat"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/heartbeats/*"]
  }

  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["models/", "models/*"]
    }
  }

  # facesearch: galleries/<gallery>/ holds one object per enrolled face; every worker lists and reads
  # them on a search and writes one on an enrolment (worker/models/gallery.py).
  statement {
    sid       = "FaceGalleries"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/galleries/*"]
  }

  statement {
    sid       = "ListFaceGalleries"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["galleries/*"]
    }
  }

  statement {
    sid       = "ShipLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [local.log_group_arns["worker"]]
  }
}

# --- web -------------------------------------------------------------------------

data "aws_iam_policy_document" "web" {
  source_policy_documents = [
    data.aws_iam_policy_document.read_catalogue.json,
    data.aws_iam_policy_document.put_metrics.json,
    data.aws_iam_policy_document.use_table_key.json,
  ]

  statement {
    sid = "SubmitRequests"
    actions = [
      "sqs:SendMessage",
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
    ]
    resources = local.request_queue_arns
  }

  statement {
    sid = "OwnReplyQueues"
    actions = [
      "sqs:CreateQueue",
      "sqs:DeleteQueue",
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:TagQueue", # owner/created tags at creation and the heartbeat tag the janitor reads (autoscaler/janitor.py)
    ]
    resources = [local.reply_queue_arns]
  }

  # Batches (webserver/bulk.py, shared/batches.py): the web records a batch (inputs.jsonl, batch.json,
  # the active marker) and an owner's cancel, and reads batch.json and the cancel marker back.
  # It sends no batch item (bulk queues: the driver only) and never reads batch-io/ (the driver does).
  statement {
    sid     = "RecordBatches"
    actions = ["s3:PutObject", "s3:GetObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/batches/*",
    ]
  }

  statement {
    sid       = "MarkBatchesActive"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/batches-active/*"]
  }

  # Notifications (shared/notify.py): a key's webhook secret (GET/POST /webhooks/secret) and a job's
  # notice in the outbox; enqueue reads pending/ and done/ first so a notice is queued once.
  statement {
    sid     = "QueueNoticesAndSecrets"
    actions = ["s3:PutObject", "s3:GetObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/notify/secrets/*",
      "${aws_s3_bucket.data.arn}/notify/pending/*",
    ]
  }

  statement {
    sid       = "SeeDeliveredNotices"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/notify/done/*"]
  }

  # Model versions (issue 24): the web routes by each service's traffic policy (shared/traffic.py).
  statement {
    sid       = "ReadTrafficPolicies"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/models/*/traffic.json"]
  }

  statement {
    sid     = "WriteUploadsAndJobs"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/uploads/*",
      "${aws_s3_bucket.data.arn}/jobs/*",
    ]
  }

  # DELETE /faces/<gallery>[/<name>] (webserver/faces.py): face embeddings are biometric data, so an
  # erasure removes every version and delete marker of a tenant's faces. The web never reads them.
  statement {
    sid       = "EraseFaces"
    actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    resources = ["${aws_s3_bucket.data.arn}/galleries/*"]
  }

  statement {
    sid       = "ListFaceVersions"
    actions   = ["s3:ListBucketVersions"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["galleries/*"]
    }
  }

  statement {
    sid     = "ReadResultsJobsHeartbeats"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/results/*",
      "${aws_s3_bucket.data.arn}/jobs/*",
      "${aws_s3_bucket.data.arn}/heartbeats/*",
    ]
  }

  statement {
    sid       = "ShipLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [local.log_group_arns["web"]]
  }

  # API keys: look one up, count a call against its monthly quota (webserver/auth.py, shared/keys.py).
  statement {
    sid       = "CheckApiKeys"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.api_keys.arn]
  }

  statement {
    sid       = "WriteUsageLog"
    actions   = ["dynamodb:BatchWriteItem"]
    resources = [aws_dynamodb_table.usage.arn]
  }
}

# --- autoscaler -------------------------------------------------------------------

data "aws_iam_policy_document" "autoscaler" {
  source_policy_documents = [
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
    resources = [for q in aws_sqs_queue.dlq : q.arn]
  }

  statement {
    sid       = "AnswerDeadLettered"
    actions   = ["sqs:SendMessage"]
    resources = [local.reply_queue_arns]
  }

  statement {
    sid       = "ReadResultsAndFailures"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/results/*", "${aws_s3_bucket.data.arn}/failures/*"]
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

  statement {
    sid     = "FinishBatchesAndNotices"
    actions = ["s3:DeleteObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/batches-active/*",
      "${aws_s3_bucket.data.arn}/notify/pending/*",
    ]
  }

  statement {
    sid       = "ListBatchWork"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["batches-active/*", "notify/pending/*", "results/*", "batch-io/*"]
    }
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
    sid       = "ListVersionStats"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["version-stats/*"]
    }
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

# The ec2 fleet only (autoscaler/fleet/ec2.py: run_instances from the worker template, terminate by pool
# tag). Terraform deploys fleet = asg, where the groups launch and the autoscaler needs none of this:
# attached only when autoscaler_fleet = "ec2".
data "aws_iam_policy_document" "autoscaler_ec2_fleet" {
  # RunInstances touches several resource types; each only as the worker template names it:
  # this stack's AMI, private subnets and worker security group, nothing overridden in the call.
  statement {
    sid       = "RunFromWorkerTemplate"
    actions   = ["ec2:RunInstances"]
    resources = [aws_launch_template.worker.arn]

    condition {
      test     = "ArnLike"
      variable = "ec2:LaunchTemplate"
      values   = [aws_launch_template.worker.arn]
    }
  }

  statement {
    sid     = "RunOnlyTemplateResources"
    actions = ["ec2:RunInstances"]
    resources = [
      "arn:${local.partition}:ec2:${local.region}::image/${var.ami_id}",
      aws_security_group.worker.arn,
      "${local.ec2_arn_base}:network-interface/*",
      "${local.ec2_arn_base}:volume/*",
    ]

    condition {
      test     = "ArnLike"
      variable = "ec2:LaunchTemplate"
      values   = [aws_launch_template.worker.arn]
    }

    condition {
      test     = "Bool"
      variable = "ec2:IsLaunchTemplateResource"
      values   = ["true"]
    }
  }

  statement {
    sid       = "RunInThisStacksSubnets"
    actions   = ["ec2:RunInstances"]
    resources = ["${local.ec2_arn_base}:subnet/*"]

    condition {
      test     = "ArnLike"
      variable = "ec2:LaunchTemplate"
      values   = [aws_launch_template.worker.arn]
    }

    condition {
      test     = "Bool"
      variable = "ec2:IsLaunchTemplateResource"
      values   = ["true"]
    }

    condition {
      test     = "ArnEquals"
      variable = "ec2:Vpc"
      values   = [aws_vpc.main.arn]
    }
  }

  # The instance itself: only from the template, of its instance type, carrying the pool tag.
  statement {
    sid       = "RunTaggedWorkers"
    actions   = ["ec2:RunInstances"]
    resources = ["${local.ec2_arn_base}:instance/*"]

    condition {
      test     = "ArnLike"
      variable = "ec2:LaunchTemplate"
      values   = [aws_launch_template.worker.arn]
    }

    condition {
      test     = "Bool"
      variable = "ec2:IsLaunchTemplateResource"
      values   = ["true"]
    }

    condition {
      test     = "StringEquals"
      variable = "ec2:InstanceType"
      values   = [var.worker_instance_type]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/${var.pool_tag_key}"
      values   = [local.pool_tag_value]
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

# --- operator review -----------------------------------------------------------------

# `classifycloud metrics` (classifycloud/report) runs on an operator's machine: attach
# this managed policy to the operator's user or role to review without admin rights.
data "aws_iam_policy_document" "operator_review" {
  statement {
    sid       = "ReadMetrics"
    actions   = ["cloudwatch:GetMetricData", "cloudwatch:ListMetrics"]
    resources = ["*"] # read-only metric queries have no resource-level permissions.
  }

  # shadow/: the review's shadow-version table (classifycloud/report/versions.py).
  statement {
    sid       = "ReadResults"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/results/*", "${aws_s3_bucket.data.arn}/shadow/*"]
  }

  statement {
    sid       = "ListResults"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["results/", "results/*", "shadow/", "shadow/*"]
    }
  }
}

# `classifycloud dlq list|redrive` on an operator's machine: move dead-lettered requests back.
data "aws_iam_policy_document" "operator_dlq" {
  statement {
    sid       = "ReadAndRemoveDeadLetters"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"]
    resources = [for q in aws_sqs_queue.dlq : q.arn]
  }

  statement {
    sid       = "SendBackToRequestQueues"
    actions   = ["sqs:SendMessage", "sqs:GetQueueUrl"]
    resources = local.request_queue_arns
  }

  statement {
    sid       = "ReadDeadLetteredRecords"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/results/*"]
  }

  statement {
    sid       = "ClearDeadLetteredRecords"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/results/*", "${aws_s3_bucket.data.arn}/failures/*"]
  }
}

resource "aws_iam_policy" "operator_dlq" {
  name        = "${var.prefix}-operator-dlq"
  description = "classifycloud dlq list|redrive: read dead-letter queues and send their requests back."
  policy      = data.aws_iam_policy_document.operator_dlq.json
}

resource "aws_iam_policy" "operator_review" {
  name        = "${var.prefix}-operator-review"
  description = "Read-only access for `classifycloud metrics`: CloudWatch metrics and result records."
  policy      = data.aws_iam_policy_document.operator_review.json
}

# `classifycloud keys` and `classifycloud usage` (classifycloud/keyadmin.py, usage_report.py) on an
# operator's machine: create, list and revoke keys; read the usage log.
data "aws_iam_policy_document" "operator_edge" {
  source_policy_documents = [data.aws_iam_policy_document.use_table_key.json]

  statement {
    sid       = "AdministerApiKeys"
    actions   = ["dynamodb:PutItem", "dynamodb:Scan", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.api_keys.arn]
  }

  statement {
    sid       = "ReadUsageLog"
    actions   = ["dynamodb:Query"]
    resources = [aws_dynamodb_table.usage.arn]
  }
}

resource "aws_iam_policy" "operator_edge" {
  name        = "${var.prefix}-operator-edge"
  description = "`classifycloud keys` and `classifycloud usage`: administer API keys, read the usage log."
  policy      = data.aws_iam_policy_document.operator_edge.json
}

# --- operator publish ------------------------------------------------------------------

# `classifycloud train` publishes a service from an operator's machine (classifycloud/publish.py):
# attach this managed policy to the operator's user or role to add, replace or remove services
# without admin rights. It writes models/ and creates request queues (by name prefix) only.
data "aws_iam_policy_document" "operator_publish" {
  statement {
    sid       = "WriteServices"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/models/*"]
  }

  statement {
    sid       = "ListServices"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["models/", "models/*"]
    }
  }

  statement {
    sid       = "CreateServiceQueues"
    actions   = ["sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes"]
    resources = local.request_queue_arns
  }
}

resource "aws_iam_policy" "operator_publish" {
  name        = "${var.prefix}-operator-publish"
  description = "Publish services for `classifycloud train`: write models/ and create request queues."
  policy      = data.aws_iam_policy_document.operator_publish.json
}

# --- worker fleet: the Auto Scaling groups (workers.tf) ---------------------------------
# Separate documents so the group permissions stay apart from the queue / instance ones.

locals {
  worker_group_arns = [aws_autoscaling_group.worker_warm.arn, aws_autoscaling_group.worker.arn]
}

# A worker acts only on its own instance (worker/asg.py passes its own id), but IAM cannot enforce that:
# Auto Scaling's SetInstanceProtection and TerminateInstanceInAutoScalingGroup authorise against the group
# ARN, and no condition key carries the instance id of the call (autoscaling:ResourceTag/* are the group's
# tags; ec2:SourceInstanceARN names the caller, not the target). Bounded here to the two worker groups;
# docs/SECURITY.md lists the residual risk (a compromised worker can unprotect or remove a peer worker).
data "aws_iam_policy_document" "worker_fleet" {
  # worker/asg.py: protected from scale-in while it holds work, cleared when idle.
  statement {
    sid       = "ProtectWhileBusy"
    actions   = ["autoscaling:SetInstanceProtection"]
    resources = local.worker_group_arns
  }

  # worker/asg.py: after a terminate message, the worker removes its own instance with a decrement.
  statement {
    sid       = "RemoveSelfFromGroup"
    actions   = ["autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = local.worker_group_arns
  }

  # worker/asg.py: its own group, and whether it is above its minimum size (may_leave).
  statement {
    sid       = "FindOwnGroup"
    actions   = ["autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups"]
    resources = ["*"] # Describe* calls have no resource-level permissions.
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

resource "aws_iam_role_policy" "worker_fleet" {
  name   = "${var.prefix}-worker-fleet"
  role   = aws_iam_role.component["worker"].id
  policy = data.aws_iam_policy_document.worker_fleet.json
}

resource "aws_iam_role_policy" "autoscaler_fleet" {
  name   = "${var.prefix}-autoscaler-fleet"
  role   = aws_iam_role.component["autoscaler"].id
  policy = data.aws_iam_policy_document.autoscaler_fleet.json
}
