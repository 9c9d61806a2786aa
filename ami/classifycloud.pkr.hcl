# ClassifyCloud instance image: the project in a venv, the systemd units of all three
# components (user data enables one), the CloudWatch agent. Built on the AWS Deep
# Learning Base GPU AMI (Ubuntu 22.04: NVIDIA driver and CUDA already installed).
#
#   packer init ami/ && packer build -var region=us-east-1 ami/
#
# The AMI id it prints is infra/terraform's ami_id.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.2.8"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region to build in (the AMI is usable there; copy it for others)."
}

variable "instance_type" {
  type        = string
  default     = "g4dn.xlarge"
  description = "Build on the worker's GPU type so the bake-time model check runs on the GPU."
}

variable "source_ami_name" {
  type        = string
  default     = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
  description = "Name filter of the base image (AWS Deep Learning Base GPU AMI, Ubuntu)."
}

variable "project_dir" {
  type        = string
  default     = "${path.root}/.."
  description = "The ClassifyCloud checkout to install."
}

variable "prefetch_models" {
  type        = bool
  default     = true
  description = "Load every available catalogue service once at bake time (fails the build on a broken model)."
}

variable "volume_size_gb" {
  type        = number
  default     = 100
  description = "Root volume size; infra/terraform's root_volume_gb must be at least this."
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
}

source "amazon-ebs" "classifycloud" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = "ubuntu"
  ami_name      = "classifycloud-${local.timestamp}"
  encrypt_boot  = true
  imds_support  = "v2.0"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.volume_size_gb
    volume_type           = "gp3"
    throughput            = 125 # gp3's baseline, explicit: older amazon builders require it for gp3
    iops                  = 3000
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name        = "classifycloud-${local.timestamp}"
    Application = "classifycloud"
  }
}

build {
  sources = ["source.amazon-ebs.classifycloud"]

  # The tracked files of the checkout, as a tarball (no venvs, no caches).
  provisioner "shell-local" {
    inline = ["git -C '${var.project_dir}' archive --format=tar.gz -o /tmp/classifycloud-src.tar.gz HEAD"]
  }

  provisioner "file" {
    source      = "/tmp/classifycloud-src.tar.gz"
    destination = "/tmp/classifycloud-src.tar.gz"
    # made by shell-local above during the build: without this, validation (and so every build on a
    # machine without a tarball left from an earlier build) stops at "Bad source ... no such file"
    generated = true
  }

  provisioner "file" {
    source      = "${path.root}/systemd/"
    destination = "/tmp/classifycloud-systemd"
  }

  provisioner "file" {
    source      = "${path.root}/scripts/"
    destination = "/tmp/classifycloud-scripts"
  }

  provisioner "shell" {
    environment_vars = [
      "CLASSIFYCLOUD_SRC=/tmp/classifycloud-src.tar.gz",
      "CLASSIFYCLOUD_UNITS=/tmp/classifycloud-systemd",
      "CLASSIFYCLOUD_SCRIPTS=/tmp/classifycloud-scripts",
      "PREFETCH_MODELS=${var.prefetch_models}",
    ]
    execute_command = "chmod +x {{ .Path }}; sudo -E bash '{{ .Path }}'"
    scripts = [
      "${path.root}/scripts/install.sh",
      "${path.root}/scripts/install-cloudwatch-agent.sh",
      "${path.root}/scripts/bake-check.sh",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
  }
}
