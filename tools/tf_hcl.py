"""Terraform files read as plain dicts with python-hcl2, for the tests that check the configuration's content.

Whether the configuration is valid Terraform for the AWS provider is `terraform validate`'s job
(tests/test_infra_terraform.py runs it with the real provider); this module only parses, and writes
out the `dynamic` blocks infra/terraform generates repeated blocks with (expand_dynamic), so the tests
read a generated policy statement as Terraform builds it.
"""
import json


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
    """Parse one .tf file with python-hcl2 and normalise it (shared by tests/test_infra_*.py)."""
    import hcl2  # python-hcl2
    with open(path) as fh:
        return normalise(hcl2.load(fh))


def load_tf_files(folder, pattern="*.tf"):
    """Every file of `folder` matching `pattern`, parsed and merged: {block kind: [entries, file by file]}."""
    import glob
    import os
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        for kind, entries in load_tf(path).items():
            if isinstance(entries, list):
                out.setdefault(kind, []).extend(entries)
    return out


def folder_locals(folder):
    """{name: value} of every `locals` entry in the folder's .tf files (values as python-hcl2 reads them)."""
    return {k: v for block in load_tf_files(folder).get("locals", []) for k, v in block.items()
            if not k.startswith("__")}


def _reference(value, scope):
    """The value a whole-string reference names: ${<iterator>.value[.field…]}, ${<iterator>.key}, and
    ${local.x} where x is a list or map (a local that is a string stays a reference, as the tests compare it)."""
    if not (isinstance(value, str) and value.startswith("${") and value.endswith("}")):
        return value
    path = value[2:-1].split(".")
    if path[0] == "local" and len(path) == 2 and isinstance(scope["local"].get(path[1]), (list, dict)):
        return _resolve(scope["local"][path[1]], scope)
    if path[0] in scope and path[0] != "local" and len(path) >= 2:
        key, item = scope[path[0]]
        if path[1] == "key" and len(path) == 2:
            return key
        if path[1] == "value":
            for field in path[2:]:
                item = item[field]
            return item
    return value


def _resolve(value, scope):
    if isinstance(value, list):
        return [_resolve(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, scope) for k, v in value.items()}
    return _reference(value, scope)


def expand_dynamic(body, local_values, scope=None):
    """A block's body with its `dynamic` blocks written out as the static blocks Terraform generates.

    Only what infra/terraform uses to generate repeated blocks is understood: `for_each` naming a local
    (a list or map, whose items may name locals) or a field of the enclosing iterator, and content
    attributes that are whole references to the iterator (`statement.value.sid`). Everything else is
    kept as python-hcl2 reads it, so a body without `dynamic` blocks comes back unchanged.
    """
    scope = scope if scope is not None else {"local": local_values}
    out = {k: (_resolve(v, scope) if len(scope) > 1 else v) for k, v in body.items() if k != "dynamic"}
    for entry in body.get("dynamic", []):
        for label, spec in entry.items():
            items = _resolve(spec["for_each"], scope)
            pairs = items.items() if isinstance(items, dict) else enumerate(items)
            iterator = spec.get("iterator", label)
            for key, item in pairs:
                inner = {**scope, iterator: (key, item)}
                contents = spec["content"] if isinstance(spec["content"], list) else [spec["content"]]
                for content in contents:
                    out.setdefault(label, []).append(expand_dynamic(content, local_values, inner))
    return out


def policy_documents(folder, pattern="*.tf"):
    """{name: body} of every aws_iam_policy_document, dynamic blocks written out; one of a document with
    `for_each` over a local is named name["key"] per key, as Terraform addresses it."""
    local_values = folder_locals(folder)
    out = {}
    for entry in load_tf_files(folder, pattern).get("data", []):
        for rtype, named in entry.items():
            if rtype != "aws_iam_policy_document":
                continue
            for name, body in named.items():
                each = _resolve(body.get("for_each"), {"local": local_values})
                for key in each if isinstance(each, dict) else [None]:
                    out[name if key is None else f'{name}["{key}"]'] = document(body, local_values, key)
    return out


def document(body, local_values, key=None):
    """A policy document's body written out; `key` picks one instance of a document with `for_each`."""
    if key is None:
        return expand_dynamic(body, local_values)
    each = _resolve(body["for_each"], {"local": local_values})
    return expand_dynamic(body, local_values, {"local": local_values, "each": (key, each[key])})


# The name of the document a `${data.aws_iam_policy_document.<name>.json}` reference reads.
DOCUMENT_REFERENCE = r'\$\{data\.aws_iam_policy_document\.(\w+(?:\["\w+"\])?)\.json\}'
