#!/usr/bin/env bash
# Copy model weights from s3://<bucket>/models/ to $CLASSIFYCLOUD_MODEL_DIR (packaged catalogue
# paths resolve against it), except live services' folders (models/<service>/entry.yaml), which
# the worker reads from S3 itself; the bucket is the settings' (CLASSIFYCLOUD_BUCKET, else
# "<prefix>-data"). Skips files already present with the same size.
set -euo pipefail

VENV="${VENV:-/opt/classifycloud/venv}"  # overridable for tests and other layouts
: "${CLASSIFYCLOUD_MODEL_DIR:=/var/lib/classifycloud-worker/models}"
export CLASSIFYCLOUD_MODEL_DIR

mkdir -p "$CLASSIFYCLOUD_MODEL_DIR"

"$VENV/bin/python" - <<'PY'
import os

from shared.aws import client
from shared.config import Settings

settings = Settings.from_env()
target = os.environ["CLASSIFYCLOUD_MODEL_DIR"]
s3 = client("s3", settings)
copied = kept = 0
objects = [obj for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket_name,
                                                                        Prefix="models/")
           for obj in page.get("Contents", [])]
# Folders with an entry.yaml are live services: workers load them from S3 themselves (and follow changes).
live = {obj["Key"].split("/")[1] for obj in objects
        if obj["Key"].count("/") == 2 and obj["Key"].endswith("/entry.yaml")}
for obj in objects:
    rel = obj["Key"][len("models/"):]
    if not rel or rel.endswith("/") or rel.split("/")[0] in live:
        continue
    path = os.path.realpath(os.path.join(target, rel))
    if not path.startswith(os.path.realpath(target) + os.sep):
        print(f"skipping {obj['Key']}: outside the model folder")
        continue
    if os.path.exists(path) and os.path.getsize(path) == obj["Size"]:
        kept += 1
        continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s3.download_file(settings.bucket_name, obj["Key"], path + ".part")
    os.replace(path + ".part", path)
    copied += 1
print(f"models: {copied} copied, {kept} already present, into {target}")
PY
