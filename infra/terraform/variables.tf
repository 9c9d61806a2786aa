# Defaults mirror shared/config.py (Settings); tests/test_infra_crosscheck.py keeps them in step.

# --- naming and placement ----------------------------------------------------

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "prefix" {
  description = "Name prefix of every queue, the bucket and the worker pool tag (Settings.prefix)."
  type        = string
  default     = "classifycloud"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,30}$", var.prefix))
    error_message = "The prefix must be 2-31 lowercase letters, digits or hyphens (it is part of queue and bucket names)."
  }

  # The web role owns every queue named "<prefix>-reply-*": a prefix containing "-reply-" would let
  # another stack's role (prefix "x") reach this stack's queues ("x-reply-...-requests-...").
  validation {
    condition     = !strcontains(var.prefix, "-reply-") && !endswith(var.prefix, "-reply")
    error_message = "The prefix must not contain \"-reply-\" or end in \"-reply\" (reply queue names start with \"<prefix>-reply-\")."
  }
}

variable "bucket_name" {
  description = "S3 bucket for uploads, results, heartbeats and model weights; empty means \"<prefix>-data\" (Settings.bucket_name)."
  type        = string
  default     = ""
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

# --- queues and storage --------------------------------------------------------

variable "visibility_timeout_s" {
  description = "Request queues: seconds a worker holds a message before it is redelivered (Settings.visibility_timeout_s)."
  type        = number
  default     = 60
}

variable "bulk_visibility_timeout_s" {
  description = "Bulk queues (batch items): seconds a worker holds an item before it is redelivered (Settings.bulk_visibility_timeout_s)."
  type        = number
  default     = 120
}

variable "max_receive_count" {
  description = "Deliveries of a request before it moves to its dead-letter queue (Settings.max_receive_count)."
  type        = number
  default     = 5
}

variable "message_retention_s" {
  description = "Request queues keep a message this long (Settings.message_retention_s)."
  type        = number
  default     = 86400
}

variable "terminate_retention_s" {
  description = "Terminate queue retention; short, because old terminate messages are stale anyway (Settings.terminate_retention_s)."
  type        = number
  default     = 60
}

variable "dlq_retention_s" {
  description = "Dead-letter queues keep a failed request this long (14 days, the SQS maximum, as classifycloud/provision.py does)."
  type        = number
  default     = 1209600
}

variable "upload_expiry_days" {
  description = "Uploaded images (uploads/) are deleted after this many days."
  type        = number
  default     = 7
}

variable "result_expiry_days" {
  description = "Result records (results/) and job markers (jobs/) are deleted after this many days."
  type        = number
  default     = 30
}

# --- network -------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC this stack creates."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Availability zones to spread subnets over (the ALB needs at least two)."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "Use between 2 and 4 availability zones."
  }
}

variable "allowed_cidrs" {
  description = "Client CIDR blocks allowed to reach the load balancer."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate for the HTTPS listener. Required: API keys are on in AWS, and bearer keys and face photos must not cross the internet in clear (empty only with allow_plain_http)."
  type        = string
  default     = ""
}

variable "allow_plain_http" {
  description = "Serve plain HTTP on port 80 without a certificate_arn (tests and demos only): bearer keys and photos then travel unencrypted. Without it a plan with no certificate fails."
  type        = bool
  default     = false
}

variable "gallery_retention_days" {
  description = "Days an enrolled face (galleries/, biometric data) is kept before S3 expires it; 0 keeps it until DELETE /faces erases it. Old versions always expire after a day."
  type        = number
  default     = 365

  validation {
    condition     = var.gallery_retention_days >= 0 && floor(var.gallery_retention_days) == var.gallery_retention_days
    error_message = "gallery_retention_days must be a whole number of days, 0 or more."
  }
}

variable "autoscaler_fleet" {
  description = "How the autoscaler adds workers (Settings.fleet): asg (the worker Auto Scaling groups launch) or ec2 (run_instances from the worker template; only then does its role get RunInstances and PassRole)."
  type        = string
  default     = "asg"

  validation {
    condition     = contains(["asg", "ec2"], var.autoscaler_fleet)
    error_message = "autoscaler_fleet must be asg or ec2."
  }
}

# --- instances -----------------------------------------------------------------

variable "public_hostnames" {
  description = "Extra public host names of the web (a DNS name pointing at the ALB); the ALB's own name is always included (Settings.trusted_hosts, Settings.own_hosts)."
  type        = list(string)
  default     = []
}

variable "ami_id" {
  description = "AMI built by ami/classifycloud.pkr.hcl (project, venv and systemd units); used by workers, web and autoscaler."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "The ami_id must look like ami-0123456789abcdef0 (the Packer build prints it)."
  }
}

variable "worker_instance_type" {
  description = "GPU instance type of the workers."
  type        = string
  default     = "g4dn.xlarge"
}

variable "worker_instance_types" {
  description = "GPU instance types of the spot group's mixed-instances policy (at least three, so spot capacity is found in more pools); the warm group uses worker_instance_type."
  type        = list(string)
  default     = ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"]

  validation {
    condition     = length(var.worker_instance_types) >= 3
    error_message = "Name at least three GPU instance types for the spot group."
  }
}

variable "worker_on_demand_base" {
  description = "On-demand instances at the bottom of the spot group (the always-on workers); spot above it."
  type        = number
  default     = 1
}

variable "worker_on_demand_percentage_above_base" {
  description = "Share of on-demand instances above the base in the spot group (0 = all spot)."
  type        = number
  default     = 0
}

variable "worker_warm_pool_size" {
  description = "Stopped, pre-initialised workers kept for bursts = the burst group's size. Set it to the policy's expected burst: ceil(burst requests x seconds per request / latency_budget_s) - min_workers (`classifycloud simulate` prints it per trace; docs/AUTOSCALING.md)."
  type        = number
  default     = 7

  validation {
    condition     = var.worker_warm_pool_size >= 1
    error_message = "The warm pool needs at least one instance."
  }
}

variable "worker_warm_pool_state" {
  description = "State of warm-pool instances: Stopped (pay for EBS only) or Hibernated (RAM kept; needs an instance type and AMI that support hibernation)."
  type        = string
  default     = "Stopped"

  validation {
    condition     = contains(["Stopped", "Hibernated"], var.worker_warm_pool_state)
    error_message = "The worker_warm_pool_state must be Stopped or Hibernated."
  }
}

variable "worker_health_grace_s" {
  description = "Seconds after launch before the groups' EC2 health checks count (boot + model load)."
  type        = number
  default     = 300
}

variable "root_volume_gb" {
  description = "Root volume size of every instance; at least the AMI's snapshot size (the Deep Learning base AMI needs about 75 GB)."
  type        = number
  default     = 100
}

variable "min_workers" {
  description = "The autoscaler never runs fewer workers than this (Settings.min_workers)."
  type        = number
  default     = 1
}

variable "max_workers" {
  description = "The autoscaler never runs more workers than this (Settings.max_workers)."
  type        = number
  default     = 10
}

variable "scaling_policy" {
  description = "Autoscaler policy: backlog (default) or xcloud-baseline (the original, as a baseline; classifycloud is its old name) (Settings.policy)."
  type        = string
  default     = "backlog"

  validation {
    condition     = contains(["backlog", "xcloud-baseline", "classifycloud"], var.scaling_policy)
    error_message = "The scaling_policy must be backlog or xcloud-baseline (classifycloud, its old name)."
  }
}

variable "latency_budget_s" {
  description = "Backlog policy: size the fleet to drain what waits within this many seconds (Settings.latency_budget_s)."
  type        = number
  default     = 10
}

variable "web_instance_type" {
  description = "Instance type of the web tier."
  type        = string
  default     = "t3.small"
}

variable "web_count" {
  description = "Web instances behind the load balancer."
  type        = number
  default     = 2
}

variable "web_processes" {
  description = "gunicorn processes per web instance, each with its own reply queue (Settings.web_processes)."
  type        = number
  default     = 2
}

variable "web_port" {
  description = "Port gunicorn listens on behind the load balancer (Settings.web_port)."
  type        = number
  default     = 8080
}

variable "reply_timeout_s" {
  description = "Seconds the web waits for a reply before answering 504 with the job id (Settings.reply_timeout_s); the ALB idle timeout is set above it."
  type        = number
  default     = 120
}

variable "autoscaler_instance_type" {
  description = "Instance type of the single autoscaler instance."
  type        = string
  default     = "t3.micro"
}

variable "pool_tag_key" {
  description = "Tag key that marks worker instances; its value is \"<prefix>-workers\" (Settings.pool_tag_value)."
  type        = string
  default     = "classifycloud:pool"
}

variable "enable_ssm" {
  description = "Attach AmazonSSMManagedInstanceCore so operators can open Session Manager shells (no SSH is opened either way)."
  type        = bool
  default     = false
}

# --- observability --------------------------------------------------------------

variable "metrics_namespace" {
  description = "CloudWatch namespace the components publish to (Settings.metrics_namespace)."
  type        = string
  default     = "ClassifyCloud"
}

variable "log_level" {
  description = "Log level of every component (Settings.log_level)."
  type        = string
  default     = "INFO"
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (a year by default, for incident review; lower it to save storage)."
  type        = number
  default     = 365
}

variable "alarm_oldest_request_age_s" {
  description = "Alarm when the oldest request in a queue has waited longer than this."
  type        = number
  default     = 300
}

variable "alarm_5xx_percent" {
  description = "Alarm when this percentage of load balancer responses are 5xx over five minutes."
  type        = number
  default     = 5
}

variable "metric_alarms" {
  description = "Per-service alarms on our own metrics (names from shared/metrics.py DEFINITIONS): metric name -> threshold the statistic must exceed."
  type        = map(number)
  default = {
    Timeouts = 0
  }
}

variable "alarm_email" {
  description = "Address subscribed to the alarm topic; empty subscribes nobody."
  type        = string
  default     = ""
}

variable "table_deletion_protection" {
  description = "DynamoDB deletion protection on the API-key and usage tables (off by default so `terraform destroy` tears down)."
  type        = bool
  default     = false
}
