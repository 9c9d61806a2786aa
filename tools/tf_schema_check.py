#!/usr/bin/env python3
"""Check Terraform files against the AWS provider's resource schemas, offline.

`terraform validate` needs the provider plugin, which cannot be downloaded here.
This script reads every *.tf file under the given folders with python-hcl2 and
checks each `resource` and `data` block of the hashicorp/aws provider against
the provider's schema (shared/terraform/aws-provider-*-schema.json.gz):
unknown resource or data types, unknown arguments or nested blocks, missing
required arguments or blocks. Default schema: tools/terraform/ beside this script.

    python3 tf_schema_check.py infra/terraform [more folders]
    python3 tf_schema_check.py --allow aws_instance.foo_bar infra/terraform

Exit status: 0 clean, 1 problems found, 2 could not run.
Needs: pip install python-hcl2
"""
import argparse
import glob
import gzip
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Vendored from the team's ../shared/tools: CI may not have ../shared, so the schema
# travels with the script in tools/terraform/ (the ../terraform fallback is the original layout).
DEFAULT_SCHEMA = (sorted(glob.glob(os.path.join(HERE, "terraform", "aws-provider-*-schema.json.gz")))
                  or sorted(glob.glob(os.path.join(HERE, "..", "terraform", "aws-provider-*-schema.json.gz"))))
META_ARGS = {"count", "for_each", "provider", "depends_on", "lifecycle", "provisioner", "connection"}


def _unquote(text):
    """python-hcl2 >= 7 keeps the quotes of labels and string literals: '"aws_instance"' -> 'aws_instance'."""
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


def normalise(node):
    """python-hcl2 output of any version as plain dicts/lists: unquoted keys and literals, no __is_block__."""
    if isinstance(node, dict):
        return {_unquote(k): normalise(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [normalise(v) for v in node]
    return _unquote(node)


def load_tf(path):
    """Parse one .tf file with python-hcl2 and normalise it (shared with tests/test_infra_*.py)."""
    import hcl2  # python-hcl2
    with open(path) as fh:
        return normalise(hcl2.load(fh))


def load_schema(path):
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def check_block(body, schema, where, allow, problems):
    """body: python-hcl2 dict of one block instance; schema: {"attributes", "block_types"}."""
    attrs, blocks = schema["attributes"], schema["block_types"]
    present = set()
    for key, value in body.items():
        if key.startswith("__"):
            continue
        if key == "dynamic":
            for dyn in value:
                for name, spec in dyn.items():
                    present.add(name)
                    if name not in blocks:
                        if f"{where}.{name}" not in allow:
                            problems.append(f"{where}: unknown dynamic block '{name}'")
                        continue
                    for content in spec.get("content", []):
                        check_block(content, blocks[name]["block"], f"{where}.{name}", allow, problems)
            continue
        present.add(key)
        if key in attrs:
            continue
        if key in blocks:
            for inst in value:
                if isinstance(inst, dict):
                    check_block(inst, blocks[key]["block"], f"{where}.{key}", allow, problems)
            continue
        if f"{where}.{key}" in allow:
            continue
        problems.append(f"{where}: unknown argument or block '{key}'")
    for name, spec in attrs.items():
        if spec.get("required") and name not in present:
            problems.append(f"{where}: missing required argument '{name}'")
    for name, spec in blocks.items():
        if spec.get("min_items", 0) > 0 and name not in present:
            problems.append(f"{where}: missing required block '{name}'")


def check_file(path, schema, allow, problems, counts):
    try:
        doc = load_tf(path)
    except Exception as exc:  # noqa: BLE001 - report any parse failure
        problems.append(f"{path}: cannot parse: {exc}")
        return
    for kind in ("resource", "data"):
        for entry in doc.get(kind, []):
            for rtype, named in entry.items():
                if not rtype.startswith("aws_"):
                    continue
                for name, body in named.items():
                    counts[kind] += 1
                    where = f"{os.path.relpath(path)}:{body.get('__start_line__', '?')} {'data.' if kind == 'data' else ''}{rtype}.{name}"
                    rschema = schema[kind].get(rtype)
                    if rschema is None:
                        if rtype not in allow:
                            problems.append(f"{where}: unknown {kind} type '{rtype}' in hashicorp/aws {schema['version']}")
                        continue
                    body = {k: v for k, v in body.items() if k not in META_ARGS}
                    check_block(body, rschema, where, {a.split(" ", 1)[-1] for a in allow} | allow, problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--schema", default=DEFAULT_SCHEMA[-1] if DEFAULT_SCHEMA else None)
    ap.add_argument("--allow", action="append", default=[],
                    help="TYPE or TYPE.NAME.ARG to accept (e.g. an argument newer than the schema)")
    args = ap.parse_args()
    try:
        import hcl2  # noqa: F401
    except ImportError:
        print("tf_schema_check: needs python-hcl2 (pip install python-hcl2)", file=sys.stderr)
        return 2
    if not args.schema or not os.path.exists(args.schema):
        print("tf_schema_check: no schema file found", file=sys.stderr)
        return 2
    schema = load_schema(args.schema)
    files = sorted({f for d in args.folders for f in glob.glob(os.path.join(d, "**", "*.tf"), recursive=True)})
    if not files:
        print(f"tf_schema_check: no .tf files under {' '.join(args.folders)}", file=sys.stderr)
        return 2
    problems, counts = [], {"resource": 0, "data": 0}
    for path in files:
        check_file(path, schema, set(args.allow), problems, counts)
    for p in problems:
        print(p)
    print(f"tf_schema_check: {len(files)} files, {counts['resource']} resources, {counts['data']} data sources "
          f"checked against hashicorp/aws {schema['version']}: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
