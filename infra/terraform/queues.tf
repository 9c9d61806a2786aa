# One request queue and one bulk queue per catalogue service, each with a dead-letter queue
# (modules/service_queue), and the terminate queue. Names come from modules/naming (shared/naming.py
# rules). Reply queues are not here: each web process creates and deletes its own.

# Request queues: only the web role sends requests (a forged one may name any image).
module "request_queues" {
  source = "./modules/service_queue"

  queue_names          = local.request_queue_names
  dlq_names            = local.dlq_names
  visibility_timeout_s = var.visibility_timeout_s
  receive_wait_time_s  = 20
  message_retention_s  = var.message_retention_s
  dlq_retention_s      = var.dlq_retention_s
  max_receive_count    = var.max_receive_count
  sqs_arn_base         = local.sqs_arn_base
  sender_sid           = "OnlyTheWebSendsRequests"
  sender_role_arn      = aws_iam_role.component["web"].arn
}

# Bulk queues (batch items, issue 23): low priority; workers take them only while the request queues
# are quiet (worker/bulk.py). Attributes equal what shared/service_queues.py ensure_bulk_queue gives a
# service added later, so both kinds behave alike. Items are sent by the batch driver only (a thread
# of the autoscaler process, autoscaler/batches.py): a forged item could name any image and bill any
# batch. The web records batches in S3, it never sends.
module "bulk_queues" {
  source = "./modules/service_queue"

  queue_names          = local.bulk_queue_names
  dlq_names            = local.bulk_dlq_names
  visibility_timeout_s = var.bulk_visibility_timeout_s
  message_retention_s  = var.message_retention_s
  dlq_retention_s      = var.dlq_retention_s
  max_receive_count    = var.max_receive_count
  sqs_arn_base         = local.sqs_arn_base
  sender_sid           = "OnlyTheBatchDriverSendsItems"
  sender_role_arn      = aws_iam_role.component["autoscaler"].arn
}

resource "aws_sqs_queue" "terminate" {
  name                      = local.terminate_queue
  message_retention_seconds = var.terminate_retention_s
  sqs_managed_sse_enabled   = true
}

# A forged terminate stops a worker: only the autoscaler role sends terminates, whatever other grants
# exist in the account (identity policies say what each role may do; this says who may send at all).
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

# The request and bulk queues were resources of this file before modules/service_queue: a stack
# applied then re-plans with every one of them moved, none replaced (tests/test_deploy_moved.py).
moved {
  from = aws_sqs_queue.requests
  to   = module.request_queues.aws_sqs_queue.queue
}

moved {
  from = aws_sqs_queue.dlq
  to   = module.request_queues.aws_sqs_queue.dlq
}

moved {
  from = aws_sqs_queue_redrive_allow_policy.dlq
  to   = module.request_queues.aws_sqs_queue_redrive_allow_policy.dlq
}

moved {
  from = aws_sqs_queue_policy.requests
  to   = module.request_queues.aws_sqs_queue_policy.queue
}

moved {
  from = aws_sqs_queue.bulk
  to   = module.bulk_queues.aws_sqs_queue.queue
}

moved {
  from = aws_sqs_queue.bulk_dlq
  to   = module.bulk_queues.aws_sqs_queue.dlq
}

moved {
  from = aws_sqs_queue_redrive_allow_policy.bulk_dlq
  to   = module.bulk_queues.aws_sqs_queue_redrive_allow_policy.dlq
}

moved {
  from = aws_sqs_queue_policy.bulk
  to   = module.bulk_queues.aws_sqs_queue_policy.queue
}
