# Managed policies for an operator's user or role: what the `classifycloud` commands need when they run
# on an operator's machine against this stack (outputs.tf gives their ARNs).

# `classifycloud metrics` (classifycloud/report) runs on an operator's machine: attach
# this managed policy to the operator's user or role to review without admin rights.
data "aws_iam_policy_document" "operator_review" {
  source_policy_documents = [data.aws_iam_policy_document.bucket_listing["operator_review"].json]

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
}

# `classifycloud dlq list|redrive` on an operator's machine: move dead-lettered requests back.
data "aws_iam_policy_document" "operator_dlq" {
  statement {
    sid       = "ReadAndRemoveDeadLetters"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"]
    resources = module.request_queues.dlq_arns
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
  source_policy_documents = [data.aws_iam_policy_document.bucket_listing["operator_publish"].json]

  statement {
    sid       = "WriteServices"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/models/*"]
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
