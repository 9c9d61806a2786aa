output "url" {
  description = "Base URL of the service (first curl: <url>/classify?url=...)."
  value       = "${local.https ? "https" : "http"}://${aws_lb.web.dns_name}"
}

output "bucket" {
  description = "Data bucket: upload model weights to s3://<bucket>/models/."
  value       = aws_s3_bucket.data.id
}

output "request_queue_urls" {
  description = "Request queue URL per service."
  value       = module.request_queues.queue_urls
}

output "dead_letter_queue_urls" {
  description = "Dead-letter queue URL per service."
  value       = module.request_queues.dlq_urls
}

output "bulk_queue_urls" {
  description = "Bulk queue (batch items) URL per packaged service; the batch driver sends to them."
  value       = module.bulk_queues.queue_urls
}

output "bulk_dead_letter_queue_urls" {
  description = "Bulk dead-letter queue URL per packaged service."
  value       = module.bulk_queues.dlq_urls
}

output "terminate_queue_url" {
  description = "Queue the autoscaler sends terminate messages to."
  value       = aws_sqs_queue.terminate.url
}

output "worker_launch_template_id" {
  description = "Launch template the autoscaler starts workers from (CLASSIFYCLOUD_LAUNCH_TEMPLATE)."
  value       = aws_launch_template.worker.id
}

output "worker_groups" {
  description = "Worker Auto Scaling groups in the order the autoscaler fills them (CLASSIFYCLOUD_ASG_NAMES)."
  value       = [aws_autoscaling_group.worker_warm.name, aws_autoscaling_group.worker.name]
}

output "pool_tag" {
  description = "Tag that marks worker instances (key = value)."
  value       = "${var.pool_tag_key}=${local.pool_tag_value}"
}

output "dashboard_url" {
  description = "CloudWatch dashboard."
  value       = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#dashboards:name=${aws_cloudwatch_dashboard.main.dashboard_name}"
}

output "log_groups" {
  description = "CloudWatch log group per component."
  value       = { for c, g in aws_cloudwatch_log_group.component : c => g.name }
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms notify."
  value       = aws_sns_topic.alarms.arn
}

output "operator_review_policy_arn" {
  description = "Attach to an operator's user or role to run `classifycloud metrics` against this stack."
  value       = aws_iam_policy.operator_review.arn
}

output "operator_edge_policy_arn" {
  description = "Attach to an operator's user or role to run `classifycloud keys` and `classifycloud usage`."
  value       = aws_iam_policy.operator_edge.arn
}

output "operator_publish_policy_arn" {
  description = "Attach to an operator's user or role to run `classifycloud train` (publish services) against this stack."
  value       = aws_iam_policy.operator_publish.arn
}
