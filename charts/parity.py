#!/usr/bin/env python3
"""Compares what the chart renders with what kustomize renders from manifests/.

    parity.py MANIFESTS.yaml CHART.yaml [--allow DIFFERENCE]...
    parity.py --list        the differences that can be allowed

Both files are multi-document YAML. Objects are matched by kind, namespace and name, and
compared field by field after Helm's own labels are dropped from the chart's objects and
line breaks from base64 values. Every other difference fails, except those named with --allow: each is one of DIFFERENCES below,
the list charts/registry-gate/README.md documents. Exit 0 when the objects are the same.
"""

import json
import re
import sys

import yaml

# Labels the chart adds for Helm's tooling; manifests/ has none of them.
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
}


def drop_namespace(objects):
    """The chart renders the Namespace only with namespace.create=true."""
    return [o for o in objects if o["kind"] != "Namespace"]


def unhash_tls_secret(objects):
    """selfManaged: kustomize names the Secret registry-gate-tls-<hash of its content>; the
    chart keeps the name registry-gate-tls (the server reloads the files when they change)."""
    hashed = re.compile(r"^registry-gate-tls-[a-z0-9]{10}$")
    for o in objects:
        if o["kind"] == "Secret" and hashed.match(o["metadata"]["name"]):
            o["metadata"]["name"] = "registry-gate-tls"
        if o["kind"] == "Deployment":
            for volume in o["spec"]["template"]["spec"].get("volumes", []):
                secret = volume.get("secret", {})
                if hashed.match(secret.get("secretName", "")):
                    secret["secretName"] = "registry-gate-tls"
    return objects


# Each allowed difference rewrites the manifests' objects into what the chart renders instead.
DIFFERENCES = {
    "namespace-object": drop_namespace,
    "tls-secret-name": unhash_tls_secret,
}


def load(path):
    with open(path, encoding="utf-8") as f:
        return [o for o in yaml.safe_load_all(f) if o]


def without_helm_labels(o):
    labels = o.get("metadata", {}).get("labels")
    if labels is not None:
        for key in HELM_LABELS & labels.keys():
            del labels[key]
        if not labels:
            del o["metadata"]["labels"]
    return o


def unwrap_base64(o):
    """kustomize wraps the base64 of a generated Secret (and so the caBundle copied from it) at
    70 columns; the API server's base64 decoding skips line breaks, so they mean nothing."""
    if o.get("kind") == "Secret":
        o["data"] = {k: re.sub(r"\s", "", v) for k, v in (o.get("data") or {}).items()}
    for webhook in o.get("webhooks") or []:
        client = webhook.get("clientConfig", {})
        if "caBundle" in client:
            client["caBundle"] = re.sub(r"\s", "", client["caBundle"])
    return o


def key(o):
    m = o.get("metadata", {})
    return (o.get("kind", "?"), m.get("namespace", ""), m.get("name", "?"))


def diff(path, want, got, out):
    """Appends to out one line per leaf where want (manifests) and got (chart) differ."""
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(want.keys() | got.keys(), key=str):
            diff(f"{path}.{k}", want.get(k, "<absent>"), got.get(k, "<absent>"), out)
    elif isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (w, g) in enumerate(zip(want, got)):
            diff(f"{path}[{i}]", w, g, out)
    elif want != got:
        out.append(f"  {path}: manifests {short(want)}, chart {short(got)}")


def short(value):
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:200] + "..."


def main(argv):
    if argv == ["--list"]:
        print("\n".join(DIFFERENCES))
        return 0
    args, allowed = [], []
    it = iter(argv)
    for a in it:
        if a == "--allow":
            allowed.append(next(it, ""))
        else:
            args.append(a)
    if len(args) != 2 or any(a not in DIFFERENCES for a in allowed):
        sys.exit(f"usage: parity.py MANIFESTS.yaml CHART.yaml [--allow {'|'.join(DIFFERENCES)}]...")

    manifests = [unwrap_base64(o) for o in load(args[0])]
    for name in allowed:
        manifests = DIFFERENCES[name](manifests)
    chart = [unwrap_base64(without_helm_labels(o)) for o in load(args[1])]
    want = {key(o): o for o in manifests}
    got = {key(o): o for o in chart}

    problems = []
    for k in sorted(want.keys() - got.keys()):
        problems.append("only in manifests: %s %s/%s" % k)
    for k in sorted(got.keys() - want.keys()):
        problems.append("only in the chart: %s %s/%s" % k)
    for k in sorted(want.keys() & got.keys()):
        lines = []
        diff("", want[k], got[k], lines)
        if lines:
            problems.append("differs: %s %s/%s" % k)
            problems.extend(lines)

    allowed_text = ", ".join(allowed) or "none"
    if problems:
        print("\n".join(problems))
        print(f"{len(want)} objects in manifests, {len(got)} in the chart; allowed differences: {allowed_text}")
        return 1
    print(f"{len(got)} objects, the same (allowed differences: {allowed_text})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
