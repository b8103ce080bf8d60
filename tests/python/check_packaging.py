"""Lints the Dockerfile (hadolint) and the Helm chart (helm lint, helm template, Kubernetes
schemas) without Docker or a cluster; run by tests/it/packaging.rs.

Usage: check_packaging.py <repo root> <output dir>. Writes the strata.toml of every rendered
ConfigMap to <output dir>/<case>.toml (the Rust test feeds them to `strata check-config`)
and prints nothing on success; exits non-zero with the reasons otherwise.
"""

import pathlib
import subprocess
import sys

import helm_python
import yaml

root = pathlib.Path(sys.argv[1])
out = pathlib.Path(sys.argv[2])
bin_dir = pathlib.Path(sys.executable).parent
problems = []

# Dockerfile: every finding, down to "info", fails.
lint = subprocess.run(
    [bin_dir / "hadolint", "--no-color", "--failure-threshold", "info", root / "Dockerfile"],
    capture_output=True,
    text=True,
)
if lint.returncode != 0:
    problems.append(f"hadolint:\n{lint.stdout}{lint.stderr}")

chart = root / "helm" / "strata"
report = helm_python.lint(str(chart), strict=True, kube_version="v1.32.0")
for m in report["messages"]:
    if m["severity"] >= 2:
        problems.append(f"helm lint: {m['path']}: {m['error']}")
problems += [f"helm lint: {e}" for e in report["errors"]]

everything = {
    "autoscaling": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True, "bearerTokenSecret": {"name": "mon"}}},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "bi"}}}],
        "egress": [{"ports": [{"port": 443, "protocol": "TCP"}]}],
    },
    "secrets": {
        "jwt": {"name": "jwt"},
        "ticket": {"name": "ticket"},
        "s3": {"name": "s3"},
        "jwtKeys": {"name": "keys"},
    },
}
cluster = {
    "cluster": {
        "enabled": True,
        "meshMTLS": True,
        "planKey": {"name": "plan"},
        "executor": {"s3": {"name": "s3-read-only"}},
    },
    "secrets": {"jwt": {"name": "jwt"}, "s3": {"name": "s3"}},
}
cluster_tls = {
    "cluster": {**cluster["cluster"], "meshMTLS": False, "tls": {"secretName": "cluster-tls"}},
    "secrets": cluster["secrets"],
}
cases = {"defaults": {}, "everything": everything, "cluster": cluster, "cluster-tls": cluster_tls}
loaded = helm_python.Chart.load(str(chart))
for case, values in cases.items():
    rendered = loaded.render(values, name="strata", namespace="data")
    docs = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    manifests = out / f"{case}.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    validate = subprocess.run(
        [bin_dir / "kubernetes-validate", "-k", "1.32", "--strict", "--quiet", manifests],
        capture_output=True,
        text=True,
    )
    # The ServiceMonitor is a CRD the bundled schemas do not know; everything else must pass.
    for line in (validate.stdout + validate.stderr).splitlines():
        if "ServiceMonitor" not in line and ("ERROR" in line or "error" in line):
            problems.append(f"{case}: kubernetes-validate: {line}")

    deploy = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "strata")
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    checks = {
        "two ports": {p["name"] for p in container["ports"]} == {"http", "flight"},
        "probes": all(k in container for k in ("livenessProbe", "readinessProbe", "startupProbe")),
        "readiness on /readyz": container["readinessProbe"]["httpGet"]["path"] == "/readyz",
        "non-root": pod["spec"]["securityContext"]["runAsNonRoot"] is True,
        "read-only root": container["securityContext"]["readOnlyRootFilesystem"] is True,
        "config checksum": "checksum/config" in pod["metadata"]["annotations"],
        "service": len(by_kind.get("Service", [])) == (3 if case.startswith("cluster") else 1),
        "configmap": len(by_kind.get("ConfigMap", [])) == 1,
        "pdb": len(by_kind.get("PodDisruptionBudget", [])) == 1,
        "grace above shutdown": pod["spec"]["terminationGracePeriodSeconds"] > 30,
    }
    env = {e["name"]: e for e in container.get("env", [])}
    if case == "everything":
        checks.update({
            "hpa": len(by_kind.get("HorizontalPodAutoscaler", [])) == 1,
            "no fixed replicas with hpa": "replicas" not in deploy["spec"],
            "servicemonitor": len(by_kind.get("ServiceMonitor", [])) == 1,
            "networkpolicy": len(by_kind.get("NetworkPolicy", [])) == 1,
            "secrets from Secret refs": all(
                "secretKeyRef" in env[k]["valueFrom"]
                for k in (
                    "STRATA__AUTH__HS256_SECRET",
                    "STRATA__AUTH__TICKET_SECRET",
                    "STRATA__STORAGE__S3__ACCESS_KEY_ID",
                    "STRATA__STORAGE__S3__SECRET_ACCESS_KEY",
                )
            ),
        })
    elif case.startswith("cluster"):
        scheduler = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "strata-scheduler")
        executor = by_kind["StatefulSet"][0]
        s_env = {e["name"] for e in scheduler["spec"]["template"]["spec"]["containers"][0]["env"]}
        x_env = {e["name"]: e for e in executor["spec"]["template"]["spec"]["containers"][0]["env"]}
        policies = {p["metadata"]["name"] for p in by_kind.get("NetworkPolicy", [])}
        selector = deploy["spec"]["selector"]["matchLabels"]
        checks.update({
            "front end sends to the scheduler": env["STRATA__CLUSTER__SCHEDULER_URL"]["value"]
            == ("https" if case == "cluster-tls" else "http") + "://strata-scheduler.data.svc:50050",
            "front end signs with the plan key": "secretKeyRef" in env["STRATA__CLUSTER__PLAN_KEY"]["valueFrom"],
            "scheduler holds no secret, config or storage": not any(
                k.startswith("STRATA__STORAGE") or k in ("STRATA__CLUSTER__PLAN_KEY", "STRATA_CONFIG")
                for k in s_env
            ),
            "executors check with the plan key": "secretKeyRef" in x_env["STRATA__CLUSTER__PLAN_KEY"]["valueFrom"],
            "executors read with their own credentials": x_env["STRATA__STORAGE__S3__ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"]
            == "s3-read-only",
            "executors advertise their pod IP": "fieldRef" in x_env["STRATA__CLUSTER__EXECUTOR_EXTERNAL_HOST"]["valueFrom"],
            "scheduler and executor ports kept internal": {"strata-scheduler", "strata-executor"} <= policies,
            "front end selector excludes cluster pods": not any(
                all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
                for w in (scheduler, executor)
            ),
            "probes on cluster pods": all(
                "readinessProbe" in c and "livenessProbe" in c and "resources" in c
                for c in (
                    scheduler["spec"]["template"]["spec"]["containers"][0],
                    executor["spec"]["template"]["spec"]["containers"][0],
                )
            ),
        })
        pods = [pod, scheduler["spec"]["template"], executor["spec"]["template"]]
        if case == "cluster-tls":
            def transport(p):
                c = p["spec"]["containers"][0]
                e = {x["name"]: x.get("value") for x in c["env"]}
                mounted = any(m["name"] == "cluster-tls" for m in c.get("volumeMounts", []))
                secret = any(v.get("secret", {}).get("secretName") == "cluster-tls" for v in p["spec"]["volumes"])
                return e.get("STRATA__CLUSTER__TRANSPORT") == "tls" and mounted and secret and all(
                    e.get(f"STRATA__CLUSTER__TLS__{k}", "").startswith("/etc/strata/cluster-tls/")
                    for k in ("CA_FILE", "CERT_FILE", "KEY_FILE")
                )
            s_probe = scheduler["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
            checks.update({
                "every cluster pod under Strata's mutual TLS": all(transport(p) for p in pods),
                "scheduler probed on its port (kubelets present no certificate)": "tcpSocket" in s_probe,
            })
        else:
            checks["every cluster pod declares the mesh"] = all(
                {x["name"]: x.get("value") for x in p["spec"]["containers"][0]["env"]}.get("STRATA__CLUSTER__TRANSPORT") == "mesh"
                for p in pods
            )
    else:
        checks.update({
            "no hpa by default": "HorizontalPodAutoscaler" not in by_kind,
            "replicas": deploy["spec"]["replicas"] == 2,
        })
    problems += [f"{case}: {name}" for name, ok in checks.items() if not ok]
    config = by_kind["ConfigMap"][0]["data"]["strata.toml"]
    (out / f"{case}.toml").write_text(config)

if problems:
    print("\n".join(problems))
    sys.exit(1)
