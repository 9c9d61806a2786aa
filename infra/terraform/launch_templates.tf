# Every instance of the stack starts from a launch template in this file: the web tier and the
# autoscaler from `service` (one per role), the GPU workers from `worker` (the worker groups of
# workers.tf and the ec2 fleet's RunInstances grant name it on its own). All run the one AMI with the
# same hardening; what they share is in the locals below, so the templates differ only where the
# roles do: name, size, security group, user data, what they tag, and a worker's shutdown.

locals {
  # The autoscaler's settings name the worker template by this name, not by its id: the id would make the
  # autoscaler's user data (and so its launch template) wait on this template, and with one shared
  # settings map this template on itself.
  worker_launch_template_name = "${var.prefix}-worker"

  # The web tier and the autoscaler: one `service` template each.
  service_instances = {
    web = {
      description    = "ClassifyCloud web tier (classifycloud-web.service)"
      instance_type  = var.web_instance_type
      security_group = aws_security_group.web.id
      user_data      = local.web_user_data
    }
    autoscaler = {
      description    = "ClassifyCloud autoscaler (classifycloud-autoscaler.service)"
      instance_type  = var.autoscaler_instance_type
      security_group = aws_security_group.autoscaler.id
      user_data      = local.autoscaler_user_data
    }
  }

  # Every template's root volume: gp3 of root_volume_gb, encrypted, gone with the instance.
  root_volume = {
    device_name = "/dev/sda1"
    size_gb     = var.root_volume_gb
    type        = "gp3"
  }

  # IMDSv2 only, one hop: a container on the instance cannot reach the role's credentials.
  metadata_hop_limit = 1

  # What each template tags at launch, by resource type: a worker's volume too, both with the pool tag.
  launch_tags = {
    web        = { instance = merge(local.tags, { Name = "${var.prefix}-web" }) }
    autoscaler = { instance = merge(local.tags, { Name = "${var.prefix}-autoscaler" }) }
    worker     = { for type in ["instance", "volume"] : type => merge(local.tags, local.worker_instance_tags) }
  }
}

resource "aws_launch_template" "service" {
  for_each               = local.service_instances
  name                   = "${var.prefix}-${each.key}"
  description            = each.value.description
  image_id               = var.ami_id
  instance_type          = each.value.instance_type
  ebs_optimized          = true
  update_default_version = true
  user_data              = each.value.user_data

  iam_instance_profile {
    arn = aws_iam_instance_profile.component[each.key].arn
  }

  network_interfaces {
    security_groups             = [each.value.security_group]
    associate_public_ip_address = false
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = local.root_volume.device_name

    ebs {
      volume_size           = local.root_volume.size_gb
      volume_type           = local.root_volume.type
      encrypted             = true
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = local.metadata_hop_limit
  }

  monitoring {
    enabled = true
  }

  dynamic "tag_specifications" {
    for_each = local.launch_tags[each.key]
    content {
      resource_type = tag_specifications.key
      tags          = tag_specifications.value
    }
  }
}

resource "aws_launch_template" "worker" {
  name                                 = local.worker_launch_template_name
  description                          = "ClassifyCloud GPU worker (classifycloud-worker.service)"
  image_id                             = var.ami_id
  instance_type                        = var.worker_instance_type
  instance_initiated_shutdown_behavior = "terminate"
  ebs_optimized                        = true
  update_default_version               = true
  user_data                            = local.worker_user_data

  iam_instance_profile {
    arn = aws_iam_instance_profile.component["worker"].arn
  }

  # No subnet: the groups place instances across every private subnet.
  network_interfaces {
    security_groups             = [aws_security_group.worker.id]
    associate_public_ip_address = false
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = local.root_volume.device_name

    ebs {
      volume_size           = local.root_volume.size_gb
      volume_type           = local.root_volume.type
      encrypted             = true
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = local.metadata_hop_limit
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  dynamic "tag_specifications" {
    for_each = local.launch_tags.worker
    content {
      resource_type = tag_specifications.key
      tags          = tag_specifications.value
    }
  }
}
