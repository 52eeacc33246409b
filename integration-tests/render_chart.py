"""Render a Helm chart offline with Helm's own Go engine (PyPI `helm-python-sdk`) and lint it.

Usage: render_chart.py CHART_DIR [VALUES_FILE] [SET_JSON]
Prints JSON: {"manifests": {template path: rendered YAML}, "crds": [...], "lint": {...}}.
"""
import json
import sys

import helm_python as helm


def main() -> None:
    chart_dir = sys.argv[1]
    values = {}
    if len(sys.argv) > 2 and sys.argv[2]:
        with open(sys.argv[2], encoding="utf-8") as f:
            values = helm.values_from_yaml(f.read())
    if len(sys.argv) > 3:
        values.update(json.loads(sys.argv[3]))
    chart = helm.Chart.load(chart_dir)
    manifests = chart.render(values, name="weir", namespace="weir-system", is_install=True)
    report = helm.lint(chart_dir, values, strict=True, namespace="weir-system", kube_version="v1.30.0")
    print(json.dumps({"manifests": manifests, "crds": chart.crds, "lint": report}))


if __name__ == "__main__":
    main()
