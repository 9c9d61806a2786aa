# Log groups, alarms and the dashboard. Our own metrics come from
# local.metric_definitions (metrics.tf.json, generated from shared/metrics.py
# DEFINITIONS): one list, so the dashboard cannot drift from what the code emits.

locals {
  metrics_by_name = { for m in local.metric_definitions : m.name => m }

  # Per-service alarms on our own metrics; a name missing from the definitions fails the plan.
  metric_alarm_pairs = {
    for pair in setproduct(keys(var.metric_alarms), local.packaged_services) :
    "${pair[0]}-${pair[1]}" => {
      metric    = local.metrics_by_name[pair[0]]
      service   = pair[1]
      threshold = var.metric_alarms[pair[0]]
    }
  }

  # One graph per metric definition, grouped by component (web, worker, autoscaler).
  own_metric_widgets = [
    for i, m in local.metric_definitions : {
      type   = "metric"
      x      = (i % 3) * 8
      y      = 6 + floor(i / 3) * 6
      width  = 8
      height = 6
      properties = {
        title  = "${m.component}: ${m.name} (${m.stat})"
        region = var.region
        view   = "timeSeries"
        period = 60
        metrics = [[{
          id         = "m${i}"
          label      = m.description
          expression = "SEARCH('{${join(",", concat([var.metrics_namespace], m.dimensions))}} MetricName=\"${m.name}\"', '${m.stat}', 60)"
        }]]
      }
    }
  ]

  queue_widgets = [
    {
      type   = "metric"
      x      = 0
      y      = 0
      width  = 8
      height = 6
      properties = {
        title   = "Request queues: visible messages"
        region  = var.region
        view    = "timeSeries"
        stat    = "Maximum"
        period  = 60
        metrics = [[{ id = "visible", expression = "SEARCH('{AWS/SQS,QueueName} MetricName=\"ApproximateNumberOfMessagesVisible\" QueueName=requests QueueName=${var.prefix}', 'Maximum', 60)" }]]
      }
    },
    {
      type   = "metric"
      x      = 8
      y      = 0
      width  = 8
      height = 6
      properties = {
        title   = "Request queues: age of oldest message (s)"
        region  = var.region
        view    = "timeSeries"
        stat    = "Maximum"
        period  = 60
        metrics = [[{ id = "oldest", expression = "SEARCH('{AWS/SQS,QueueName} MetricName=\"ApproximateAgeOfOldestMessage\" QueueName=requests QueueName=${var.prefix}', 'Maximum', 60)" }]]
      }
    },
    {
      type   = "metric"
      x      = 16
      y      = 0
      width  = 8
      height = 6
      properties = {
        title  = "Load balancer: requests and 5xx"
        region = var.region
        view   = "timeSeries"
        stat   = "Sum"
        period = 60
        metrics = [
          ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.web.arn_suffix],
          ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "LoadBalancer", aws_lb.web.arn_suffix],
          ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", aws_lb.web.arn_suffix],
        ]
      }
    },
  ]
}

resource "aws_cloudwatch_log_group" "component" {
  #checkov:skip=CKV_AWS_158:Log groups use CloudWatch's default encryption; a customer KMS key would need its own key policy for the logs service.
  for_each = local.log_group_names

  name              = each.value
  retention_in_days = var.log_retention_days
}

# CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed alias/aws/sns key
# (its key policy cannot be changed): the topic gets a key of its own whose policy grants CloudWatch.
resource "aws_kms_key" "alarms" {
  description             = "Encrypts the ${var.prefix} alarm topic; CloudWatch alarms of this account may publish with it."
  enable_key_rotation     = true
  deletion_window_in_days = 7
  policy                  = data.aws_iam_policy_document.alarms_key.json
}

resource "aws_kms_alias" "alarms" {
  name          = "alias/${var.prefix}-alarms"
  target_key_id = aws_kms_key.alarms.key_id
}

data "aws_iam_policy_document" "alarms_key" {
  #checkov:skip=CKV_AWS_109:A key policy applies to its own key only ("*" means this key); the account root administers it as in AWS's default key policy.
  #checkov:skip=CKV_AWS_111:A key policy applies to its own key only ("*" means this key); the account root administers it as in AWS's default key policy.
  #checkov:skip=CKV_AWS_356:In a key policy "*" is the key itself.
  statement {
    sid       = "AccountAdministersTheKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublish"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:*"]
    }
  }
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.prefix}-alarms"
  kms_master_key_id = aws_kms_key.alarms.arn
}

resource "aws_sns_topic_subscription" "email" {
  count = var.alarm_email != "" ? 1 : 0

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  for_each = local.dlq_names

  alarm_name          = "${each.value}-not-empty"
  alarm_description   = "Requests for ${each.key} failed ${var.max_receive_count} times and sit in ${each.value}: inspect and redrive."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  depends_on = [module.request_queues]
}

resource "aws_cloudwatch_metric_alarm" "oldest_request" {
  for_each = local.request_queue_names

  alarm_name          = "${each.value}-oldest-request"
  alarm_description   = "A ${each.key} request has waited over ${var.alarm_oldest_request_age_s} s: workers are missing or too few."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_oldest_request_age_s
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  depends_on = [module.request_queues]
}

resource "aws_cloudwatch_metric_alarm" "http_5xx_rate" {
  alarm_name          = "${var.prefix}-web-5xx-rate"
  alarm_description   = "More than ${var.alarm_5xx_percent}% of load balancer responses were 5xx over five minutes."
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.alarm_5xx_percent
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "rate"
    expression  = "100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / MAX([requests, 1])"
    label       = "5xx percent"
    return_data = true
  }

  metric_query {
    id = "requests"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = { LoadBalancer = aws_lb.web.arn_suffix }
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id = "target5xx"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.web.arn_suffix }
      stat        = "Sum"
      period      = 300
    }
  }

  metric_query {
    id = "elb5xx"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.web.arn_suffix }
      stat        = "Sum"
      period      = 300
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "own_metric" {
  for_each = local.metric_alarm_pairs

  alarm_name          = "${var.prefix}-${each.key}"
  alarm_description   = "${each.value.metric.name} (${each.value.metric.description}) above ${each.value.threshold} for ${each.value.service}."
  namespace           = var.metrics_namespace
  metric_name         = each.value.metric.name
  dimensions          = { Service = each.value.service }
  statistic           = each.value.metric.stat
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  lifecycle {
    precondition {
      condition     = each.value.metric.dimensions == ["Service"]
      error_message = "metric_alarms takes metrics whose only dimension is Service (see shared/metrics.py)."
    }
  }
}

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = var.prefix
  dashboard_body = jsonencode({ widgets = concat(local.queue_widgets, local.own_metric_widgets) })
}
