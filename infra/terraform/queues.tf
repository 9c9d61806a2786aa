# One request queue per catalogue service, each with a dead-letter queue, and the
# terminate queue. Names come from local.request_queue_names (shared/naming.py rules).
# Reply queues are not here: each web process creates and deletes its own.

resource "aws_sqs_queue" "dlq" {
  for_each = local.dlq_names

  name                      = each.value
  message_retention_seconds = var.dlq_retention_s
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "requests" {
  for_each = local.request_queue_names

  name                       = each.value
  visibility_timeout_seconds = var.visibility_timeout_s
  message_retention_seconds  = var.message_retention_s
  receive_wait_time_seconds  = 20
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = var.max_receive_count
  })
}

# Only this service's request queues may use a DLQ as their dead-letter target.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  for_each = local.dlq_names

  queue_url = aws_sqs_queue.dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = ["arn:${local.partition}:sqs:${local.region}:${local.account_id}:${local.request_queue_names[each.key]}"]
  })
}

resource "aws_sqs_queue" "terminate" {
  name                      = local.terminate_queue
  message_retention_seconds = var.terminate_retention_s
  sqs_managed_sse_enabled   = true
}

# Queue policies: identity policies say what each role may do; these say who may send at all.
# A forged terminate stops a worker and a forged request may name any image: only the autoscaler
# role sends terminates, only the web role sends requests, whatever other grants exist in the account.
data "aws_iam_policy_document" "terminate_queue" {
  statement {
    sid       = "OnlyTheAutoscalerSendsTerminates"
    effect    = "Deny"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.terminate.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [aws_iam_role.component["autoscaler"].arn]
    }
  }
}

resource "aws_sqs_queue_policy" "terminate" {
  queue_url = aws_sqs_queue.terminate.id
  policy    = data.aws_iam_policy_document.terminate_queue.json
}

data "aws_iam_policy_document" "request_queue" {
  for_each = local.request_queue_names

  statement {
    sid       = "OnlyTheWebSendsRequests"
    effect    = "Deny"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.requests[each.key].arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [aws_iam_role.component["web"].arn]
    }
  }
}

resource "aws_sqs_queue_policy" "requests" {
  for_each = local.request_queue_names

  queue_url = aws_sqs_queue.requests[each.key].id
  policy    = data.aws_iam_policy_document.request_queue[each.key].json
}

# --- bulk queues (batch items, issue 23) ---------------------------------------------------
# One low-priority bulk queue per packaged service, each with its own DLQ; names from
# local.bulk_queue_names (shared/naming.py bulk_queue). Workers take them only while the request
# queues are quiet (worker/bulk.py). Attributes equal what shared/service_queues.py
# ensure_bulk_queue gives a service added later, so both kinds behave alike.

resource "aws_sqs_queue" "bulk_dlq" {
  for_each = local.bulk_dlq_names

  name                      = each.value
  message_retention_seconds = var.dlq_retention_s
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "bulk" {
  for_each = local.bulk_queue_names

  name                       = each.value
  visibility_timeout_seconds = var.bulk_visibility_timeout_s
  message_retention_seconds  = var.message_retention_s
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.bulk_dlq[each.key].arn
    maxReceiveCount     = var.max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "bulk_dlq" {
  for_each = local.bulk_dlq_names

  queue_url = aws_sqs_queue.bulk_dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = ["arn:${local.partition}:sqs:${local.region}:${local.account_id}:${local.bulk_queue_names[each.key]}"]
  })
}

# Batch items are sent by the batch driver only (a thread of the autoscaler process, autoscaler/batches.py):
# a forged item could name any image and bill any batch. The web records batches in S3, it never sends.
data "aws_iam_policy_document" "bulk_queue" {
  for_each = local.bulk_queue_names

  statement {
    sid       = "OnlyTheBatchDriverSendsItems"
    effect    = "Deny"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.bulk[each.key].arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [aws_iam_role.component["autoscaler"].arn]
    }
  }
}

resource "aws_sqs_queue_policy" "bulk" {
  for_each = local.bulk_queue_names

  queue_url = aws_sqs_queue.bulk[each.key].id
  policy    = data.aws_iam_policy_document.bulk_queue[each.key].json
}
