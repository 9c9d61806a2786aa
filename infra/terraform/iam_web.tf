# The web tier's grants (iam.tf: its role): submit requests, own its reply queues, record uploads,
# jobs and batches, check API keys.

resource "aws_iam_role_policy" "web" {
  name   = "${var.prefix}-web"
  role   = aws_iam_role.component["web"].id
  policy = data.aws_iam_policy_document.web.json
}

data "aws_iam_policy_document" "web" {
  source_policy_documents = [
    data.aws_iam_policy_document.bucket_listing["web"].json,
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
  # It sends no batch item (bulk queues: the driver only) and reads nothing of batch-io/ but output
  # shards (GET /batches/<id>/results/<n> streams the owner's; the code checks the owner and folder).
  statement {
    sid     = "RecordBatches"
    actions = ["s3:PutObject", "s3:GetObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/batches/*",
    ]
  }

  statement {
    sid       = "StreamBatchShards"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/batch-io/*/part-*.jsonl"]
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
  # erasure removes every version and delete marker of a tenant's faces. The web never reads them. An
  # enrolment's photo (uploads/<id>) is erased, every version, once the enrolment is answered.
  statement {
    sid     = "EraseFacesAndEnrolmentPhotos"
    actions = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    resources = [
      "${aws_s3_bucket.data.arn}/galleries/*",
      "${aws_s3_bucket.data.arn}/uploads/*",
    ]
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

  # API keys: look one up, count a call against its monthly quota (webserver/auth.py, webserver/keys.py).
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
