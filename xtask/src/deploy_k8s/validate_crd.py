# Validates custom resources against their CRD's openAPIV3Schema, as an API server with
# strict field validation would (kubectl's default): unknown fields are errors, not pruned.
# Run by xtask (deploy_k8s/manifests.rs) with the interpreter of kubernetes-validate, which
# brings jsonschema and PyYAML.
#
#   python3 validate_crd.py CRD.yaml RESOURCES.yaml...
#
# Prints one line per error ("file: Kind/name: field.path: message") and a last line
# "checked N"; exits 1 on any error or when no resource of the CRD's kind was found.
import sys

import jsonschema
import yaml


def strict(schema):
    """The schema with `additionalProperties: false` wherever it lists `properties`."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if isinstance(schema.get("properties"), dict):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def main():
    with open(sys.argv[1]) as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    schemas = {
        f"{group}/{v['name']}": strict(v["schema"]["openAPIV3Schema"])
        for v in crd["spec"]["versions"]
        if v.get("served")
    }
    bad = checked = 0
    for path in sys.argv[2:]:
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            if not doc or doc.get("kind") != kind:
                continue
            name = f"{path}: {kind}/{doc.get('metadata', {}).get('name')}"
            schema = schemas.get(doc.get("apiVersion"))
            if schema is None:
                print(f"{name}: apiVersion {doc.get('apiVersion')} is not served by the CRD")
                bad += 1
                continue
            # OpenAPI 3.0 schemas are JSON Schema draft 4 in what a CRD may use
            # (exclusiveMinimum/-Maximum are booleans there too).
            validator = jsonschema.Draft4Validator(schema)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            for e in errors:
                field = ".".join(map(str, e.path)) or "(root)"
                print(f"{name}: {field}: {e.message}")
            bad += bool(errors)
            checked += 1
    print(f"checked {checked}")
    sys.exit(1 if bad or not checked else 0)


main()
