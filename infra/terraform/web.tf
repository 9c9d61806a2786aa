# The web tier: gunicorn (classifycloud-web.service) on an auto scaling group in the
# private subnets, behind an Application Load Balancer in the public subnets.

locals {
  web_env = {
    CLASSIFYCLOUD_WEB_HOST        = "0.0.0.0"
    CLASSIFYCLOUD_WEB_PORT        = tostring(var.web_port)
    CLASSIFYCLOUD_WEB_PROCESSES   = tostring(var.web_processes)
    CLASSIFYCLOUD_REPLY_TIMEOUT_S = tostring(var.reply_timeout_s)
    # behind exactly one proxy (the ALB): X-Forwarded-For/-Proto from it, links only on these names
    CLASSIFYCLOUD_PROXY_HOPS    = "1"
    CLASSIFYCLOUD_TRUSTED_HOSTS = join(",", local.public_hosts)
  }
  https = var.certificate_arn != ""
}

resource "aws_autoscaling_group" "web" {
  name                = "${var.prefix}-web"
  min_size            = var.web_count
  max_size            = var.web_count
  desired_capacity    = var.web_count
  vpc_zone_identifier = aws_subnet.private[*].id
  target_group_arns   = [aws_lb_target_group.web.arn]
  # EC2, not ELB: /readyz answers 503 while the queue endpoint is unreachable or the process drains,
  # and that must not make the group replace healthy web instances (systemd restarts a dead process).
  health_check_type         = "EC2"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.service["web"].id
    version = aws_launch_template.service["web"].latest_version
  }

  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.prefix}-web"
    propagate_at_launch = true
  }
}

resource "aws_lb" "web" {
  #checkov:skip=CKV_AWS_91:ALB access logs need a log bucket with an ELB-account policy; request metrics and the web log group cover operations.
  #checkov:skip=CKV2_AWS_28:A WAF web ACL costs ~$5/month plus per-request fees; attach one for public production use (see docs/DEPLOY.md).
  #checkov:skip=CKV_AWS_150:Deletion protection would block `terraform destroy`, the documented teardown.
  name                       = "${var.prefix}-web"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = aws_subnet.public[*].id
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  # Above reply_timeout_s, so a slow classification gets the web's 504 with its job id.
  idle_timeout = var.reply_timeout_s + 10
}

resource "aws_lb_target_group" "web" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the web tier stays inside the VPC's private subnets.
  name                 = "${var.prefix}-web"
  port                 = var.web_port
  protocol             = "HTTP"
  vpc_id               = aws_vpc.main.id
  deregistration_delay = var.reply_timeout_s

  # readiness: this process can accept work; workers are optional (the fleet may be at zero)
  health_check {
    path                = "/readyz"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Plain HTTP serves only until certificate_arn is set; then this listener redirects to HTTPS.
  #checkov:skip=CKV_AWS_103:See CKV_AWS_2: the HTTPS listener uses a TLS 1.2+ policy.
  #checkov:skip=CKV2_AWS_20:Redirects to HTTPS whenever certificate_arn is set (the first deployment has no certificate).
  load_balancer_arn = aws_lb.web.arn
  port              = 80
  protocol          = "HTTP"

  lifecycle {
    # API keys are on in AWS: a bearer key or a face photo must never cross the internet in clear.
    precondition {
      condition     = var.certificate_arn != "" || var.allow_plain_http
      error_message = "certificate_arn is empty: the ALB would serve API keys and photos over plain HTTP. Set certificate_arn, or allow_plain_http = true for a test or demo."
    }
  }

  default_action {
    type             = local.https ? "redirect" : "forward"
    target_group_arn = local.https ? null : aws_lb_target_group.web.arn

    dynamic "redirect" {
      for_each = local.https ? [1] : []

      content {
        port        = "443"
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.web.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.web.arn
  }
}
