# The worker's grants (iam.tf: its role): consume requests and batch items, answer, read images and
# models, write results, heartbeats and face galleries; and act on its own Auto Scaling group.

resource "aws_iam_role_policy" "worker" {
  name   = "${var.prefix}-worker"
  role   = aws_iam_role.component["worker"].id
  policy = data.aws_iam_policy_document.worker.json
}

data "aws_iam_policy_document" "worker" {
  source_policy_documents = [
    data.aws_iam_policy_document.bucket_listing["worker"].json,
    data.aws_iam_policy_document.put_metrics.json,
  ]

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
  # batch driver alone sends items (the bulk queues' policy in queues.tf says so too).
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

  # facesearch: galleries/<gallery>/ holds one object per enrolled face; every worker lists and reads
  # them on a search and writes one on an enrolment (worker/models/gallery.py).
  statement {
    sid       = "FaceGalleries"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/galleries/*"]
  }

  statement {
    sid       = "ShipLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [local.log_group_arns["worker"]]
  }
}

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

resource "aws_iam_role_policy" "worker_fleet" {
  name   = "${var.prefix}-worker-fleet"
  role   = aws_iam_role.component["worker"].id
  policy = data.aws_iam_policy_document.worker_fleet.json
}
