variable "queue_names" {
  description = "Queue name per service (modules/naming: request_queue_names or bulk_queue_names)."
  type        = map(string)
}

variable "dlq_names" {
  description = "Dead-letter queue name per service, keyed as queue_names."
  type        = map(string)
}

variable "visibility_timeout_s" {
  description = "Seconds a worker holds a message before it is redelivered."
  type        = number
}

variable "receive_wait_time_s" {
  description = "Long-poll wait of a receive that names none (0: the SQS default)."
  type        = number
  default     = 0
}

variable "message_retention_s" {
  description = "How long a queue keeps a message."
  type        = number
}

variable "dlq_retention_s" {
  description = "How long a dead-letter queue keeps a message."
  type        = number
}

variable "max_receive_count" {
  description = "Deliveries of a message before it moves to its dead-letter queue."
  type        = number
}

variable "sqs_arn_base" {
  description = "arn:<partition>:sqs:<region>:<account>, the prefix of every queue ARN."
  type        = string
}

variable "sender_sid" {
  description = "Sid of the queue policy statement that denies every other sender."
  type        = string
}

variable "sender_role_arn" {
  description = "The only role that may send to these queues."
  type        = string
}
