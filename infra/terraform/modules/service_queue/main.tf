# One queue per service, each with its dead-letter queue, and a queue policy that lets one role send.
# The root module calls it for the request queues and for the bulk queues (queues.tf), and pins the
# provider's version (versions.tf).

terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

resource "aws_sqs_queue" "dlq" {
  for_each = var.dlq_names

  name                      = each.value
  message_retention_seconds = var.dlq_retention_s
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "queue" {
  for_each = var.queue_names

  name                       = each.value
  visibility_timeout_seconds = var.visibility_timeout_s
  message_retention_seconds  = var.message_retention_s
  receive_wait_time_seconds  = var.receive_wait_time_s
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = var.max_receive_count
  })
}

# Only this service's own queue may use its DLQ as a dead-letter target. The ARN is built from the
# name, not read from the queue, so the allow policy does not wait for the queue it names.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  for_each = var.dlq_names

  queue_url = aws_sqs_queue.dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = ["${var.sqs_arn_base}:${var.queue_names[each.key]}"]
  })
}

# Identity policies say what each role may do; this says who may send at all, whatever other grants
# exist in the account.
data "aws_iam_policy_document" "queue" {
  for_each = var.queue_names

  statement {
    sid       = var.sender_sid
    effect    = "Deny"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.queue[each.key].arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [var.sender_role_arn]
    }
  }
}

resource "aws_sqs_queue_policy" "queue" {
  for_each = var.queue_names

  queue_url = aws_sqs_queue.queue[each.key].id
  policy    = data.aws_iam_policy_document.queue[each.key].json
}
