#!/usr/bin/env python3
"""Validates deploy/kubernetes/ offline (run by .ci/run; needs kubernetes-validate==1.37.0).

1. Every resource of the base and of the Litestream overlay (the overlay's strategic-merge patch
   applied here, by name, as kustomize would) against the Kubernetes OpenAPI schemas shipped in
   kubernetes-validate, strict (unknown fields fail), for each of KUBERNETES_VERSIONS (default
   1.29.0, the oldest the manifests need: the pod-index label is 1.28, native sidecars 1.29;
   and 1.37.0, the newest the package ships; it has 1.25 to 1.37). A kind without a schema fails.
2. What the schemas cannot see: the shard index comes from the pod-index label through the
   downward API into `--shard $(SHARD)/$(SHARDS)` with SHARDS == replicas; probes on /healthz and
   /readyz on port 9187, which the ConfigMap's [http] listen serves on 0.0.0.0; every *_file key
   of the config points into the Secret's mount and names a key of the Secret; the pod and
   container security contexts (non-root, read-only root, no capabilities); a volume per pod.
3. The ConfigMap's config.toml passes the real binary's `check-config` (secret files and state
   directory moved to a temporary directory; STELLANTIS_SYNC_BIN, else the cargo target
   directory's debug build). A build without the `[http]` section (added by the operations work)
   is told so, and the rest of the file is checked without it.
"""

import copy
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "kubernetes")
VERSIONS = os.environ.get("KUBERNETES_VERSIONS", "1.29.0,1.37.0").split(",")
errors = []


def check(cond, what):
    if not cond:
        errors.append(what)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_name(items, name):
    return next((i for i in items if i.get("name") == name), None)


def merge(base, patch):
    """Strategic merge for what the overlay uses: dicts merge, lists of named items merge by
    name, other values replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
        isinstance(i, dict) and "name" in i for i in base + patch
    ):
        out = [copy.deepcopy(i) for i in base]
        for p in patch:
            existing = by_name(out, p["name"])
            if existing is None:
                out.append(copy.deepcopy(p))
            else:
                out[out.index(existing)] = merge(existing, p)
        return out
    return copy.deepcopy(patch)


def kustomize(folder):
    """The resources a kustomization lists, with its patches applied."""
    (k,) = load(os.path.join(folder, "kustomization.yaml"))
    out = []
    for r in k.get("resources", []):
        path = os.path.join(folder, r)
        if os.path.isdir(path):
            out.extend(kustomize(path))
        else:
            out.extend(load(path))
    for p in k.get("patches", []):
        (patch,) = load(os.path.join(folder, p["path"]))
        target = [
            i for i, r in enumerate(out)
            if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
        ]
        check(len(target) == 1, f"{folder}: patch {p['path']} matches {len(target)} resources")
        if target:
            out[target[0]] = merge(out[target[0]], patch)
    return out


def validate(resources, label, version):
    for r in resources:
        name = f"{label}: {r['kind']}/{r['metadata']['name']}"
        try:
            kubernetes_validate.validate(r, version, strict=True)
            print(f"ok   {name} against Kubernetes {version}")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{name}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{name}: no schema ({e})")


def semantics(resources, label):
    kinds = {(r["kind"], r["metadata"]["name"]): r for r in resources}
    sts = kinds[("StatefulSet", "stellantis-sync")]
    cm = kinds[("ConfigMap", "stellantis-sync-config")]
    secret = kinds[("Secret", "stellantis-sync-secrets")]
    svc = kinds[("Service", "stellantis-sync")]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    main = by_name(pod["containers"], "stellantis-sync")
    env = {e["name"]: e for e in main["env"]}

    check(spec["serviceName"] == svc["metadata"]["name"], f"{label}: serviceName")
    check(svc["spec"].get("clusterIP") == "None", f"{label}: the Service is not headless")
    check(
        env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['apps.kubernetes.io/pod-index']",
        f"{label}: SHARD does not come from the pod-index label",
    )
    check(int(env["SHARDS"]["value"]) == spec["replicas"], f"{label}: SHARDS != replicas")
    args = main["args"]
    check(args[args.index("--shard") + 1] == "$(SHARD)/$(SHARDS)", f"{label}: --shard argument")
    check(args[args.index("--config") + 1] == "/etc/stellantis-sync/config.toml", f"{label}: --config")

    port = {p["name"]: p["containerPort"] for p in main["ports"]}
    check(port.get("http") == 9187, f"{label}: container port 9187")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        g = main.get(probe, {}).get("httpGet", {})
        check(g.get("path") == path and g.get("port") in ("http", 9187), f"{label}: {probe}")

    psc = pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0, f"{label}: non-root pod")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: seccomp")
    check(pod.get("automountServiceAccountToken") is False, f"{label}: service account token")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{label}: {c['name']}: read-only root")
        check(sc.get("allowPrivilegeEscalation") is False, f"{label}: {c['name']}: privilege escalation")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: {c['name']}: capabilities")

    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    check("data" in claims and mounts["data"]["mountPath"] == "/var/lib/stellantis-sync",
          f"{label}: a volume per pod at the state directory")

    config = tomllib.loads(cm["data"]["config.toml"])
    check(config["state_dir"] == "/var/lib/stellantis-sync", f"{label}: state_dir")
    check(config.get("http", {}).get("listen") == "0.0.0.0:9187", f"{label}: [http] listen")
    secret_mount = mounts["secrets"]["mountPath"]
    volume = by_name(pod["volumes"], "secrets")
    check(volume["secret"]["secretName"] == secret["metadata"]["name"], f"{label}: secret volume")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    files = []
    for table in [config.get("app", {})] + config.get("accounts", []):
        for k, v in table.items():
            check(not (k in ("client_secret", "password", "refresh_token")),
                  f"{label}: a secret inline in the ConfigMap ({k})")
            if k.endswith("_file"):
                files.append(v)
    check(len(files) >= 3, f"{label}: *_file keys")
    for f in files:
        check(os.path.dirname(f) == secret_mount and os.path.basename(f) in keys,
              f"{label}: {f} is not a key of the Secret mounted at {secret_mount}")
    check(mounts["config"]["mountPath"] == "/etc/stellantis-sync", f"{label}: config mount")


def binary():
    if os.environ.get("STELLANTIS_SYNC_BIN"):
        return os.environ["STELLANTIS_SYNC_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "..", "..", "target")
    return os.path.join(target, "debug", "stellantis-sync")


def check_config(resources):
    """The ConfigMap's config.toml through `stellantis-sync check-config`."""
    exe = binary()
    if not os.path.exists(exe):
        errors.append(f"{exe} is missing: `cargo build` first (or set STELLANTIS_SYNC_BIN)")
        return
    cm = next(r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "stellantis-sync-config")
    sts = next(r for r in resources if r["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in by_name(pod["containers"], "stellantis-sync")["volumeMounts"]}
    with tempfile.TemporaryDirectory() as tmp:
        secrets = os.path.join(tmp, "secrets")
        os.makedirs(secrets)
        secret = next(r for r in resources if r["kind"] == "Secret")
        for key in list(secret.get("stringData", {})) + list(secret.get("data", {})):
            with open(os.path.join(secrets, key), "w") as f:
                f.write("placeholder")
        text = cm["data"]["config.toml"]
        text = text.replace(mounts["secrets"], secrets).replace(mounts["data"], os.path.join(tmp, "state"))
        path = os.path.join(tmp, "config.toml")

        def run(body):
            with open(path, "w") as f:
                f.write(body)
            env = {k: v for k, v in os.environ.items() if not k.startswith("STELLANTIS_SYNC_")}
            return subprocess.run([exe, "--config", path, "check-config"], capture_output=True, text=True, env=env)

        o = run(text)
        if o.returncode != 0 and "http: unknown field" in o.stderr:
            print("note: this build has no [http] section yet (the operations work adds it); "
                  "checking the rest of the ConfigMap's config.toml without it")
            o = run(re.sub(r"(?ms)^\[http\]\n.*?(?=^\[)", "", text))
        if o.returncode != 0:
            errors.append(f"ConfigMap config.toml fails check-config: {o.stdout}{o.stderr}")
        else:
            print("ok   ConfigMap config.toml passes check-config:", o.stdout.strip().split(": ", 1)[-1])


def main():
    base = kustomize(ROOT)
    overlay = kustomize(os.path.join(ROOT, "litestream"))
    for version in VERSIONS:
        if tuple(int(x) for x in version.split(".")[:2]) < (1, 29):
            sys.exit(f"Kubernetes {version}: the manifests need >= 1.29 (pod-index label, native sidecar)")
        validate(base, "base", version)
        validate(overlay, "litestream", version)
    semantics(base, "base")
    semantics(overlay, "litestream")
    check_config(base)
    pod = next(r for r in overlay if r["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    side = by_name(pod.get("initContainers", []), "litestream")
    check(side is not None and side.get("restartPolicy") == "Always", "litestream: native sidecar")
    check(by_name(pod["volumes"], "litestream-config") is not None, "litestream: config volume")
    check(by_name(pod["volumes"], "config") is not None, "litestream: base volumes kept")
    if errors:
        for e in errors:
            print("FAIL", e)
        sys.exit(1)
    print(f"deploy/kubernetes: {len(base)} base and {len(overlay)} overlay resources valid")


if __name__ == "__main__":
    main()
