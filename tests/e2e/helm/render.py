"""Lints and renders the chart with Helm's own SDK (PyPI helm-python-sdk) and validates every
manifest with kubernetes-validate; driven by tests/e2e/tests/helm.rs.

    render.py CHART VALUES.yaml|- KUBE_VERSION RELEASE NAMESPACE

Prints one JSON object: lint findings, schema problems, each rendered document (parsed) with
its template path, the manifests refused, and which validator checked each document. Exits 0
whatever it found: the Rust test decides what fails.

kubernetes-validate has schemas for Kubernetes' own kinds only. The prometheus-operator kinds
(ServiceMonitor, PrometheusRule) are checked against that operator's CRD models from PyPI
cloudcoil-models-prometheus-operator (pydantic: types, enums, patterns); those models ignore
unknown fields, so a document must also come back unchanged from the model, or a misspelt
field would pass. Any other kind without a schema is refused.
"""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml


def validate_prometheus_operator(doc: dict) -> None:
    # Imported only when such a document is rendered: loading the models takes about 3 s,
    # and most renders have none.
    from cloudcoil.models.prometheus_operator import v1 as prometheus_operator_v1

    model = getattr(prometheus_operator_v1, doc["kind"])
    parsed = model.model_validate(doc)
    back = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if back != doc:
        raise ValueError(f"fields the {doc['kind']} CRD does not have (or changed): "
                         f"rendered {json.dumps(doc, sort_keys=True)} "
                         f"but the CRD model reads {json.dumps(back, sort_keys=True)}")


def main() -> None:
    chart, values_path, kube_version, release, namespace = sys.argv[1:6]
    values = {}
    if values_path != "-":
        with open(values_path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    out = {"helm_sdk": helm.helm_sdk_version(), "lint": None, "schema_error": None,
           "render_error": None, "documents": [], "invalid": [], "validated_by": {}}
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
    out["notes"] = next((t for s, t in rendered.items() if s.endswith("/NOTES.txt")), None)
    for source, text in sorted(rendered.items()):
        if not source.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            out["documents"].append({"source": source, "doc": doc})
            name = doc.get("metadata", {}).get("name")
            key = f"{doc.get('kind')}/{name}"
            try:
                if doc.get("apiVersion") == "monitoring.coreos.com/v1" and \
                        doc.get("kind") in ("ServiceMonitor", "PrometheusRule"):
                    validate_prometheus_operator(doc)
                    out["validated_by"][key] = "cloudcoil-models-prometheus-operator"
                else:
                    kubernetes_validate.validate(doc, kube_version, strict=True)
                    out["validated_by"][key] = "kubernetes-validate"
            except Exception as e:  # ValidationError, SchemaNotFoundError, pydantic's, ...
                out["invalid"].append(f"{source}: {key}: {type(e).__name__}: {e}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
