#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the repository's own test data.

Seeds are named by the SHA-1 of their bytes, as libFuzzer names the inputs it keeps, so running
this again adds only what is new and never duplicates a file. It deletes nothing: inputs that
fuzzing found and `cargo fuzz cmin` kept, or that reproduce fixed bugs, stay.

Run from anywhere: python3 fuzz/seed.py

The committed corpora are these seeds merged with what fuzzing found, then minimised so that
each stays under 2,000 files; the two document targets need edge coverage alone for that:

    cargo fuzz cmin image_reference
    cargo fuzz cmin admission_review -- -use_counters=0
"""

import base64
import hashlib
import json
import pathlib
import re

FUZZ = pathlib.Path(__file__).resolve().parent
REPO = FUZZ.parent
DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    directory = FUZZ / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def compact(value):
    return json.dumps(value, separators=(",", ":"))


def image_inputs():
    cases = json.loads((REPO / "tests/data/image-references.json").read_text())
    return sorted({case["input"] for case in cases})


def policy_texts():
    """Every policy document in the repository, the fuzz targets' own included."""
    texts = {path.name: path.read_text() for path in sorted(REPO.glob("policy/*.yaml"))}
    texts["e2e"] = (REPO / "tests/e2e/policy.yaml").read_text()
    broken = re.search(r'const BROKEN: &str = r#"(.*?)"#;', (REPO / "tests/policy_documents.rs").read_text(), re.S)
    texts["broken"] = broken.group(1)
    for source in sorted((FUZZ / "fuzz_targets").glob("*.rs")):
        for i, text in enumerate(re.findall(r'r#"\n(.*?)"#', source.read_text(), re.S)):
            texts[f"{source.stem}-{i}"] = text
    return texts


def policy_urls(texts):
    """(host, path) of every URL the policies name, wildcard labels filled in."""
    urls = set()
    for text in texts.values():
        for url in re.findall(r'url: "?([^\s",}]+)', text):
            url = re.sub(r"^https?://", "", url, flags=re.I).strip("/")
            host, _, path = url.partition("/")
            urls.add((host.replace("*", "w"), path))
    return sorted(urls)


def image_reference():
    for image in image_inputs():
        write("image_reference", image)


def policy_decide(texts):
    # Byte 0 picks the namespace (and, from 8 up, pads the host); the rest is the image, or a
    # host and a path split at the first newline.
    for image in image_inputs():
        write("policy_decide", b"\0" + image.encode())
    urls = policy_urls(texts)
    for i, (host, path) in enumerate(urls):
        for tail in ["app:1", f"app@{DIGEST}"]:
            write("policy_decide", bytes([i % 8]) + f"{host}\n{path}/{tail}".replace("\n/", "\n").encode())
    hosts = sorted({host for host, _ in urls}) + ["Index.Docker.IO", "registry-1.docker.io:443", "GHCR.IO"]
    for i, host in enumerate(hosts):
        for tail in ["forbidden/x", "untrusted/x", "shop/legacy/x", "x/y/z/app", "library/busybox"]:
            write("policy_decide", bytes([i % 8]) + f"{host}\n{tail}".encode())
    for image in ["nginx", "busybox:1.36", "library/busybox", "acme/app:1", "sha256:0123"]:
        for namespace in range(8):
            write("policy_decide", bytes([namespace]) + image.encode())
    # The example policy's `match: exact` entry and its digest rule, and its exception, which
    # applies in namespace 8 (monitoring).
    for image in [
        "registry.vendor.example/appliance/controller:1",
        f"registry.vendor.example/appliance/controller@{DIGEST}",
        "registry.vendor.example/appliance/controller/app:1",
    ]:
        write("policy_decide", b"\0" + image.encode())
    write("policy_decide", bytes([8]) + b"quay.io/legacy-vendor/agent:4.2")


def review(kind, operation, obj, old=None, namespace="shop"):
    return compact({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f1e0b7c-1d2a-4c55-9a0e-2b7c1c6c9d10",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "name": obj.get("metadata", {}).get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice@example.com", "groups": ["developers"]},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
        },
    })


def fixture(name, kind=None):
    obj = json.loads((REPO / f"tests/data/objects/{name}.json").read_text())
    obj["kind"] = kind or obj["kind"]
    return obj


def pod_spec(obj):
    """The Pod spec inside an object of any kind the fixtures have."""
    spec = obj["spec"]
    if "jobTemplate" in spec:
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"] if "template" in spec else spec


# The hostile cases of tests/data/bad-requests, built as tests/bad_input.rs builds them. Seeds
# are kept small: a case whose body exceeds this is about size, which fuzzing does not explore.
SEED_MAX_BYTES = 8192


def bad_request_cases(name):
    path = REPO / "tests/data/bad-requests" / name
    return json.loads(path.read_text())["cases"] if path.exists() else []


def repeat(spec):
    if len(spec["unit"]) * spec["times"] > SEED_MAX_BYTES:
        return None
    return spec.get("prefix", "") + spec["unit"] * spec["times"] + spec.get("suffix", "")


def bad_policy_text(spec):
    if "text" in spec:
        text = spec["text"]
    else:
        source = (REPO / "tests/bad_input.rs").read_text()
        text = re.search(r'const POLICY: &str = r#"(.*?)"#;', source, re.S).group(1)
    for old, new in spec.get("replace", []):
        text = text.replace(old, new)
    appended = repeat(spec["append"]) if "append" in spec else ""
    return None if appended is None else text + appended


def bad_object(spec):
    (form, value), = spec.items()
    if form == "fixture":
        return fixture(value)
    if form == "workload":
        return fixture("deployment", value)
    if form == "inline":
        return value
    text = bad_policy_text(value)
    if text is None:
        return None
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "registry-gate-policy", "namespace": "registry-gate"},
            "data": {"policy.yaml": text}}


def pointer_parent(root, pointer):
    parent, _, last = pointer.rpartition("/")
    node = root
    for token in parent.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node, last.replace("~1", "/").replace("~0", "~")


def bad_review(spec):
    """The body of a `review` case, or None for one built to be large."""
    if "pad_to" in spec:
        return None
    obj = bad_object(spec["object"]) if "object" in spec else fixture("pod")
    old = bad_object(spec["old"]) if "old" in spec else None
    if obj is None:
        return None
    kind = spec.get("kind") or obj.get("kind", "Pod")
    metadata = obj.get("metadata", {}) if isinstance(obj, dict) else {}
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f1e0b7c-1d2a-4c55-9a0e-2b7c1c6c9d10",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace") or "shop",
            "operation": spec.get("operation", "CREATE"),
            "userInfo": {"username": "alice@example.com", "groups": ["developers"]},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
        },
    }
    # Text spliced in after serialization, in place of placeholder strings.
    splices = []
    for pointer, text in sorted(spec.get("set_text", {}).items()):
        text = repeat(text)
        splices.append((pointer, None if text is None else json.dumps(text, ensure_ascii=False)))
    for pointer, text in sorted(spec.get("splice", {}).items()):
        splices.append((pointer, repeat(text)))
    if "nest" in spec:
        nest = spec["nest"]
        depth = nest["depth"] if len(nest["open"]) * nest["depth"] <= SEED_MAX_BYTES else None
        text = None if depth is None else nest["open"] * depth + nest.get("core", "") + nest.get("close", "") * depth
        splices.append((nest["at"], text))
    if any(text is None for _, text in splices):
        return None
    edits = sorted(spec.get("set", {}).items())
    edits += [(pointer, f"<splice {i}>") for i, (pointer, _) in enumerate(splices)]
    try:
        for pointer, value in edits:
            parent, last = pointer_parent(body, pointer)
            if isinstance(parent, list):
                parent.append(value) if last == "-" else parent.__setitem__(int(last), value)
            else:
                parent[last] = value
        for pointer in spec.get("remove", []):
            parent, last = pointer_parent(body, pointer)
            del parent[last]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    for i, (_, text) in enumerate(splices):
        data = data.replace(f'"<splice {i}>"'.encode(), text.encode())
    for edit in spec.get("edits", []):
        (form, value), = edit.items()
        if form == "replace":
            if "to_base64" in value:
                new = base64.b64decode(value["to_base64"])
            elif "to_repeat" in value:
                new = repeat(value["to_repeat"])
                if new is None:
                    return None
                new = new.encode()
            else:
                new = value.get("to", "").encode()
            data = data.replace(value["from"].encode(), new)
        elif form == "truncate":
            data = data[:value]
        elif form == "append":
            data += value.encode()
        elif form == "prepend_base64":
            data = base64.b64decode(value) + data
    return data


def bad_body(body):
    (form, value), = body.items()
    if form == "text":
        return value.encode()
    if form == "base64":
        return base64.b64decode(value)
    if form == "json":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if form == "repeat":
        text = repeat(value)
        return None if text is None else text.encode()
    return bad_review(value)


def admission_review(texts):
    images = [
        "ghcr.io/acme/web:1.2",
        "ghcr.io/acme-evil/web:1.2",
        "nginx:1.27",
        "busybox:1.36",
        "registry.corp.example:5000/shop/api:2",
        "acme.azurecr.io/c:1",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app@" + DIGEST,
        "ghcr.io/Acme/web",
        "sha256:" + DIGEST[7:],
        "",
    ]
    kinds = {"pod": ["Pod"], "job": ["Job"], "cronjob": ["CronJob"],
             "deployment": ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ReplicationController"]}
    for name, kind_names in kinds.items():
        for kind in kind_names:
            for i, image in enumerate(images):
                obj = fixture(name, kind)
                pod_spec(obj)["containers"][0]["image"] = image
                write("admission_review", review(kind, "CREATE", obj, namespace=["shop", "marketing"][i % 2]))
            old = fixture(name, kind)
            new = fixture(name, kind)
            pod_spec(new)["containers"][0]["image"] = "legacy.example.com/app:2"
            write("admission_review", review(kind, "UPDATE", new, old))
            write("admission_review", review(kind, "DELETE", old, namespace="kube-system"))
    pod = fixture("pod")
    spec = pod["spec"]
    spec["initContainers"] = [{"name": "init", "image": "registry.corp.example:5000/init:1"}]
    spec["ephemeralContainers"] = [{"name": "debug", "image": "busybox:1.36", "targetContainerName": "web"}]
    spec["volumes"] = [{"name": "cfg", "emptyDir": {}}, {"name": "model", "image": {"reference": "quay.io/x/m:1"}}]
    spec["imagePullSecrets"] = [{"name": "own-secret"}, {"name": "acr-creds"}]
    spec["containers"].append({"name": "side", "image": "acme.azurecr.io/side:1"})
    write("admission_review", review("Pod", "CREATE", pod))
    write("admission_review", review("Pod", "UPDATE", pod, fixture("pod")))
    spec["containers"] = "not a list"
    write("admission_review", review("Pod", "CREATE", pod))
    for text in texts.values():
        configmap = {"metadata": {"name": "registry-gate-policy"}, "data": {"policy.yaml": text}}
        write("admission_review", review("ConfigMap", "UPDATE", configmap, namespace="registry-gate"))
    write("admission_review", review("Service", "CREATE", {"metadata": {"name": "s"}}))
    write("admission_review", review("Pod", "CONNECT", {}))
    envelope = json.loads(review("Pod", "CREATE", fixture("pod")))
    for key, value in [("apiVersion", "admission.k8s.io/v1beta1"), ("request", None), ("request", {})]:
        write("admission_review", compact({**envelope, key: value}))
    write("admission_review", '{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":'
          '{"uid":"\\u0031-\\u00e9","kind":{"kind":"Pod"},"operation":"CREATE","namespace":"caf\\u00e9",'
          '"object":{"spec":{"containers":[{"image":"ghcr.io\\/acme\\/x:1"},{"image":"\u00f1"}]}}}}')
    write("admission_review", "{not json")
    for case in bad_request_cases("webhook.json") + bad_request_cases("policy-door.json"):
        data = bad_body(case["body"])
        if data is not None and len(data) <= SEED_MAX_BYTES:
            write("admission_review", data)


def policy_document(texts):
    for text in texts.values():
        write("policy_document", text)
    for case in bad_request_cases("policy-door.json"):
        configmap = case["body"].get("review", {}).get("object", {}).get("configmap")
        text = None if configmap is None else bad_policy_text(configmap)
        if text is not None and len(text) <= SEED_MAX_BYTES:
            write("policy_document", text)
    # Manifests go through the same YAML reader as policies.
    for case in bad_request_cases("check-f.json"):
        data = bad_body(case["manifest"]) if set(case["manifest"]) & {"text", "base64", "repeat"} else None
        if data is not None and len(data) <= SEED_MAX_BYTES:
            write("policy_document", data)
    write("policy_document", compact({
        "apiVersion": "registry-gate.io/v1", "kind": "RegistryPolicy", "mode": "audit",
        "shortNameRegistry": "mirror.corp.example:5000", "exemptNamespaces": ["kube-system", "team-?"],
        "registries": [
            {"name": "acr", "type": "ACR", "url": "*.azurecr.io", "pullSecret": "acr-creds"},
            {"name": "ecr", "type": "ECR", "url": "123456789012.dkr.ecr.*.amazonaws.com", "namespaces": ["prod-*"]},
            {"name": "v6", "type": "Generic", "url": "[::1]:5000/dev"},
        ],
        "deny": [{"url": "*.azurecr.io/untrusted", "reason": "no"}],
    }))
    head = "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\n"
    for body in [
        "registries: []\n",
        "registries:\n  - &entry {name: a, type: Generic, url: a.example}\n  - *entry\n",
        "registries:\n  - name: a\n    type: Generic\n    url: |\n      a.example\n",
        "registries: [{name: a, type: Generic, url: !!str a.example, namespaces: []}]\n",
        "registries:\n- {name: a, type: Generic, url: a.example}\n---\nregistries: []\n",
        "mode: 1\nregistries: {}\ndeny: [{url: '*'}]\n",
        "? [complex, key]\n: value\nregistries: [~, null, 1.5, true]\n",
    ]:
        write("policy_document", head + body)


def main():
    texts = policy_texts()
    image_reference()
    policy_decide(texts)
    admission_review(texts)
    policy_document(texts)
    for target in sorted((FUZZ / "corpus").iterdir()):
        print(f"{target.name}: {sum(1 for _ in target.iterdir())} files")


if __name__ == "__main__":
    main()
