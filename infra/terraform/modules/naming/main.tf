# Every name the stack derives, in one provider-free module that mirrors
# shared/naming.py and shared/config.py. Being provider-free, tests evaluate it with
# real Terraform offline (tests/test_infra_crosscheck.py) and compare with Python.

terraform {
  required_version = ">= 1.5.0"
}

variable "prefix" {
  description = "Name prefix (Settings.prefix)."
  type        = string
}

variable "services" {
  description = "Catalogue service names."
  type        = list(string)
}

variable "bucket_name" {
  description = "Bucket override; empty means \"<prefix>-data\" (Settings.bucket)."
  type        = string
  default     = ""
}

locals {
  components = ["web", "worker", "autoscaler"]
}

output "request_queue_names" {
  description = "shared.naming.request_queue(prefix, service) per service."
  value       = { for s in var.services : s => "${var.prefix}-requests-${s}" }
}

output "dlq_names" {
  description = "shared.naming.dead_letter_queue(prefix, service) per service."
  value       = { for s in var.services : s => "${var.prefix}-requests-${s}-dlq" }
}

output "bulk_queue_names" {
  description = "shared.naming.bulk_queue(prefix, service) per service: batch items, low priority."
  value       = { for s in var.services : s => "${var.prefix}-bulk-${s}" }
}

output "bulk_dlq_names" {
  description = "shared.naming.bulk_dead_letter_queue(prefix, service) per service."
  value       = { for s in var.services : s => "${var.prefix}-bulk-${s}-dlq" }
}

output "terminate_queue" {
  description = "shared.naming.terminate_queue(prefix)."
  value       = "${var.prefix}-terminate"
}

output "reply_queue_prefix" {
  description = "shared.naming.reply_queue_prefix(prefix): web reply queues start with it; IAM grants by it."
  value       = "${var.prefix}-reply-"
}

output "bucket_name" {
  description = "Settings.bucket_name."
  value       = var.bucket_name != "" ? var.bucket_name : "${var.prefix}-data"
}

output "pool_tag_value" {
  description = "Settings.pool_tag_value: the tag value that marks worker instances."
  value       = "${var.prefix}-workers"
}

output "log_group_names" {
  description = "CloudWatch log group per component."
  value       = { for c in local.components : c => "/classifycloud/${var.prefix}/${c}" }
}
