output "queue_urls" {
  description = "Queue URL per service."
  value       = { for s, q in aws_sqs_queue.queue : s => q.url }
}

output "dlq_urls" {
  description = "Dead-letter queue URL per service."
  value       = { for s, q in aws_sqs_queue.dlq : s => q.url }
}

output "dlq_arns" {
  description = "Dead-letter queue ARNs, one per service."
  value       = [for q in aws_sqs_queue.dlq : q.arn]
}
