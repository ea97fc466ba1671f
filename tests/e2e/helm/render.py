"""Lints and renders the chart with Helm's own SDK (PyPI helm-python-sdk) and validates every
manifest with kubernetes-validate; driven by tests/e2e/tests/helm.rs.

    render.py CHART VALUES.yaml|- KUBE_VERSION RELEASE NAMESPACE

Prints one JSON object: lint findings, schema problems, each rendered document (parsed) with
its template path, and the manifests kubernetes-validate refused. Exits 0 whatever it found:
the Rust test decides what fails.
"""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml


def main() -> None:
    chart, values_path, kube_version, release, namespace = sys.argv[1:6]
    values = {}
    if values_path != "-":
        with open(values_path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    out = {"helm_sdk": helm.helm_sdk_version(), "lint": None, "schema_error": None,
           "render_error": None, "documents": [], "invalid": []}
    out["lint"] = helm.lint(chart, values, strict=True, namespace=namespace,
                            kube_version=f"v{kube_version}")
    with helm.Chart.load(chart) as c:
        try:
            c.validate_schema(values)
        except helm.HelmError as e:
            out["schema_error"] = str(e)
        try:
            rendered = c.render(values, name=release, namespace=namespace, is_install=True)
        except helm.HelmError as e:
            out["render_error"] = str(e)
            rendered = {}
    for source, text in sorted(rendered.items()):
        if not source.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            out["documents"].append({"source": source, "doc": doc})
            try:
                kubernetes_validate.validate(doc, kube_version, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError, ...
                name = doc.get("metadata", {}).get("name")
                out["invalid"].append(f"{source}: {doc.get('kind')} {name}: {e}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
