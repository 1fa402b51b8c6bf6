#!/usr/bin/env python3
"""The checks of check_manifests.py can fail: each case below breaks one thing in a copy of the
checkout and expects the named check to report it, naming the object and the rule.

    check_the_checks.py [-k TEXT]    # only the cases whose description contains TEXT

A case whose `old` text no longer appears fails too: update it with the manifest it breaks.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKER = Path(__file__).resolve().parent / "check_manifests.py"
# What the checks read: copied into a scratch checkout per case.
COPY = ["k8s", "crates/admin/migrations", "crates/admin/src", "crates/model/src", "crates/worker/src",
        "sidecars", "spin.toml", "Cargo.toml", ".dockerignore", ".gitignore"]

GATEWAY = "k8s/base/spin/gateway.yaml"
AUTH = "k8s/base/spin/auth.yaml"
CONVERTER = "k8s/base/workers/converter.yaml"
NOTIFIER = "k8s/base/workers/notifier.yaml"
DATA = "k8s/components/in-cluster-data"
LEAK = """apiVersion: v1
kind: Secret
metadata:
  name: leak
stringData:
  password: s3cr3t-Pa55w0rd
"""

# (description, file, old, new, check, expected text in its report)
CASES = [
    ("a missing resource", "k8s/overlays/minikube/kustomization.yaml", "  - ../../base\n",
     "  - ../../base\n  - missing.yaml\n", "every_overlay_renders", "kustomize build fails"),
    ("an overlay without the namespace", "k8s/overlays/production/kustomization.yaml", "namespace: mp3\n", "",
     "everything_in_namespace_mp3", "must be in namespace mp3"),
    ("a misspelt Deployment field", CONVERTER, "terminationGracePeriodSeconds: 1230",
     "terminationGracePeriodSecond: 1230", "builtin_kinds_match_kubernetes_schemas", "Kubernetes 1.37.0 schema"),
    ("a misspelt SpinApp field", GATEWAY, "enableAutoscaling: true", "enableAutoScaling: true",
     "custom_resources_match_vendored_crds", "CRD schema"),
    ("a ScaledObject trigger without a type", "k8s/components/queue-autoscaling/scaledobject.yaml",
     "    - type: rabbitmq\n      metadata:", "    - metadata:", "custom_resources_match_vendored_crds",
     "'type' is a required property"),
    ("a container without limits", CONVERTER, "            limits:\n              cpu: \"2\"\n              memory: 1Gi\n",
     "            limits:\n", "workloads_have_resources_probes_and_pinned_images", "no resources.limits.cpu"),
    ("a container without a readiness probe", NOTIFIER, "readinessProbe:", "startupProbe:",
     "workloads_have_resources_probes_and_pinned_images", "container notifier: no readinessProbe"),
    ("a SpinApp without a liveness check", AUTH, "    liveness:\n", "    startup:\n",
     "workloads_have_resources_probes_and_pinned_images", "SpinApp/mp3-auth: no checks.liveness.httpGet"),
    ("a SpinApp with replicas and autoscaling", GATEWAY, "  enableAutoscaling: true\n",
     "  enableAutoscaling: true\n  replicas: 2\n", "workloads_have_resources_probes_and_pinned_images",
     "SpinApp/mp3-gateway: sets replicas with enableAutoscaling on"),
    ("a SpinApp rendered before its executor", "k8s/overlays/production/kustomization.yaml",
     "                 SpinAppExecutor]", "                 ]", "executors_apply_before_their_spinapps",
     "SpinApp/mp3-gateway: rendered before its executor containerd-shim-spin"),
    ("a SpinApp without its HPA", GATEWAY, "    name: mp3-gateway\n  minReplicas: 2", "    name: mp3-gateway-x\n  minReplicas: 2",
     "workloads_have_resources_probes_and_pinned_images", "SpinApp/mp3-gateway: no HorizontalPodAutoscaler"),
    ("an image tagged latest", f"{DATA}/mysql/statefulset.yaml", "image: mysql:8.4.6", "image: mysql:latest",
     "workloads_have_resources_probes_and_pinned_images", "uses the tag latest"),
    ("an image without a tag", f"{DATA}/mailpit/deployment.yaml", "axllent/mailpit:v1.27.11", "axllent/mailpit",
     "workloads_have_resources_probes_and_pinned_images", "has no tag"),
    ("a pod that may run as root", f"{DATA}/mongodb/statefulset.yaml", "runAsNonRoot: true", "runAsNonRoot: false",
     "workloads_run_locked_down", "runs as root"),
    ("a writable root filesystem", CONVERTER, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
     "workloads_run_locked_down", "writable root filesystem"),
    ("capabilities kept", NOTIFIER, "                - ALL", "                - NET_RAW",
     "workloads_run_locked_down", "capabilities are not all dropped"),
    ("a SpinApp with an API token", AUTH, "  serviceAccountName: mp3-auth\n", "",
     "workloads_run_locked_down", "SpinApp/mp3-auth: mounts a Kubernetes API token"),
    ("a pod with an API token", f"{DATA}/mailpit/deployment.yaml", "      automountServiceAccountToken: false\n", "",
     "workloads_run_locked_down", "Deployment/mailpit: mounts a Kubernetes API token"),
    ("no seccomp profile", CONVERTER, "        seccompProfile:\n          type: RuntimeDefault\n", "",
     "workloads_run_locked_down", "seccompProfile is not RuntimeDefault"),
    ("a real-looking Secret in the base", "k8s/base/namespace.yaml", "audit-version: v1.37\n",
     "audit-version: v1.37\n---\n" + LEAK, "secrets_in_git_are_placeholders", "Secret/leak key password: looks like a real secret"),
    ("secret files not git-ignored", "k8s/overlays/minikube/.gitignore", "/secrets/\n", "",
     "secrets_in_git_are_placeholders", "is not git-ignored"),
    ("a secret variable in plain text", AUTH,
     "    - name: jwt_secret\n      valueFrom:\n        secretKeyRef:\n          name: mp3-auth\n          key: jwt_secret\n",
     "    - name: jwt_secret\n      value: CHANGE-ME\n", "secrets_in_git_are_placeholders", "a secret variable in plain text"),
    ("a Dockerfile without USER", "sidecars/converter/Dockerfile", "USER 10001:10001\n", "",
     "dockerfiles_are_multistage_pinned_and_non_root", "final stage has no USER"),
    ("a Dockerfile running as root", "sidecars/notifier/Dockerfile", "USER 10001:10001", "USER root",
     "dockerfiles_are_multistage_pinned_and_non_root", "final stage runs as root"),
    ("a base image tagged latest", "sidecars/notifier/Dockerfile", "FROM debian:13.1-slim", "FROM debian:latest",
     "dockerfiles_are_multistage_pinned_and_non_root", "uses the tag latest"),
    ("apt with recommends", "sidecars/converter/Dockerfile", "--no-install-recommends ", "",
     "dockerfiles_are_multistage_pinned_and_non_root", "without --no-install-recommends"),
    ("apt lists kept", "sidecars/notifier/Dockerfile", "    && rm -rf /var/lib/apt/lists/* \\\n", "",
     "dockerfiles_are_multistage_pinned_and_non_root", "without rm -rf /var/lib/apt/lists/*"),
    ("a converter image without ffmpeg", "sidecars/converter/Dockerfile", "ca-certificates ffmpeg", "ca-certificates",
     "dockerfiles_are_multistage_pinned_and_non_root", "does not install ffmpeg"),
    ("an ffmpeg others' ffmpeg may trace", "sidecars/converter/Dockerfile", "chmod 0711 /usr/bin/ffmpeg",
     "chmod 0755 /usr/bin/ffmpeg", "dockerfiles_are_multistage_pinned_and_non_root", "ffmpeg is left readable"),
    ("a single-stage Dockerfile", "sidecars/notifier/Dockerfile", "FROM debian:13.1-slim\n", "",
     "dockerfiles_are_multistage_pinned_and_non_root", "not multi-stage"),
    ("a .dockerignore that drops a member", ".dockerignore", "!sidecars/\n", "",
     "dockerfiles_are_multistage_pinned_and_non_root", "excludes sidecars/converter/Cargo.toml"),
    ("a .dockerignore that lets .dev in", ".dockerignore", "*\n", "target/\n",
     "dockerfiles_are_multistage_pinned_and_non_root", "lets .dev/secrets.env into the build context"),
    ("a variable spin.toml lacks", GATEWAY, "    - name: amqp_url\n", "    - name: amqp_uri\n",
     "spinapps_match_spin_toml", "variable amqp_uri: is not a variable in spin.toml"),
    ("a required variable unset", GATEWAY, "    - name: db_url\n      value: unused-by-mp3-gateway\n", "",
     "spinapps_match_spin_toml", "required variable db_url is not set"),
    ("a secret the SpinApp does not need", GATEWAY, "    - name: db_url\n      value: unused-by-mp3-gateway\n",
     "    - name: db_url\n      valueFrom:\n        secretKeyRef:\n          name: mp3-auth\n          key: db_url\n",
     "spinapps_match_spin_toml", "gets a secret that none of its components uses"),
    ("a component in no SpinApp", AUTH, "    - validate\n", "",
     "spinapps_match_spin_toml", "component validate runs in no SpinApp"),
    ("no per-request memory limit", GATEWAY, "  invocationLimits:\n    memory: 64Mi\n", "",
     "workloads_have_resources_probes_and_pinned_images", "no invocationLimits.memory"),
    ("a key-value store the gateway opens, undefined", GATEWAY,
     "  runtimeConfig:\n    keyValueStores:\n      - name: default\n        type: spin\n", "",
     "spinapps_match_spin_toml", "opens key-value store 'default', which runtimeConfig.keyValueStores does not define"),
    ("a key-value store on disk", GATEWAY,
     "      - name: default\n        type: spin\n",
     "      - name: default\n        type: spin\n        options:\n          - name: path\n            value: /tmp/kv.db\n",
     "spinapps_match_spin_toml", "key-value store 'default' is not an in-memory `spin` store"),
    ("a local default left in the cluster", AUTH,
     "    - name: db_host\n      valueFrom:\n        configMapKeyRef:\n          name: mp3-config\n          key: db_host\n", "",
     "spinapps_match_spin_toml", "variable db_host keeps its local default"),
    ("an env the worker does not read", CONVERTER, "            - name: CONCURRENCY\n",
     "            - name: UNUSED_SETTING\n              value: \"1\"\n            - name: CONCURRENCY\n",
     "worker_env_matches_the_code", "env UNUSED_SETTING: the converter does not read it"),
    ("an env the worker reads left unset", CONVERTER, "            - name: FFMPEG_PATH\n              value: /usr/bin/ffmpeg\n", "",
     "worker_env_matches_the_code", "does not set FFMPEG_PATH"),
    ("a worker credential in plain text", NOTIFIER,
     "            - name: SMTP_PASSWORD\n              valueFrom:\n                secretKeyRef:\n                  name: mp3-notifier\n                  key: SMTP_PASSWORD\n",
     "            - name: SMTP_PASSWORD\n              value: CHANGE-ME\n", "worker_env_matches_the_code",
     "env SMTP_PASSWORD: carries credentials: must come from a Secret"),
    ("metrics on another port", CONVERTER, "value: 0.0.0.0:9101", "value: 0.0.0.0:9200",
     "ports_and_timeouts_agree", "METRICS_ADDR listens on 9200"),
    ("metrics on loopback only", NOTIFIER, "value: 0.0.0.0:9102", "value: 127.0.0.1:9102",
     "ports_and_timeouts_agree", "METRICS_ADDR 127.0.0.1:9102 does not listen on all addresses"),
    ("a grace period shorter than a conversion", CONVERTER, "terminationGracePeriodSeconds: 1230",
     "terminationGracePeriodSeconds: 200", "ports_and_timeouts_agree", "is not longer than SHUTDOWN_TIMEOUT_SECS 1200"),
    ("a shutdown that requeues conversions", CONVERTER, 'SHUTDOWN_TIMEOUT_SECS\n              value: "1200"',
     'SHUTDOWN_TIMEOUT_SECS\n              value: "300"', "ports_and_timeouts_agree",
     "is shorter than a conversion may take (JOB_TIMEOUT_SECS 1200)"),
    ("trusted_proxies left to the base", "k8s/overlays/production/kustomization.yaml",
     "      - trusted_proxies=10.4.0.0/14\n", "", "each_overlay_sets_trusted_proxies",
     "does not set trusted_proxies"),
    ("trusted_proxies trusting everyone", "k8s/overlays/minikube/kustomization.yaml",
     "trusted_proxies=10.244.0.0/16", "trusted_proxies=0.0.0.0/0", "each_overlay_sets_trusted_proxies",
     "is not a private pod network"),
    ("no way in for cert-manager's solver", "k8s/overlays/production/kustomization.yaml",
     "  - acme-solver-policy.yaml\n", "", "network_policies_allow_only_the_designed_flows",
     "block ingress-nginx -> acme-solver:8089"),
    ("a socket allowed by name", "k8s/base/app-config.env", "mongodb_host=10.96.0.27:27017",
     "mongodb_host=mongodb.mp3.svc.cluster.local:27017", "ports_and_timeouts_agree", "must be an IP address or CIDR"),
    ("a socket allowed at an address no Service has", "k8s/base/app-config.env", "amqp_host=10.96.0.56:5672",
     "amqp_host=10.96.0.57:5672", "ports_and_timeouts_agree", "no Service has clusterIP 10.96.0.57"),
    ("the gateway's URL by name", "k8s/overlays/minikube/make-secrets", '"mongodb_url": mongodb_url(MONGODB_IP)',
     '"mongodb_url": mongodb_url(MONGODB)', "ports_and_timeouts_agree",
     "Secret/mp3-gateway mongodb_url: host mongodb.mp3.svc.cluster.local is a name"),
    ("the gateway's URL outside its allow-list", "k8s/overlays/minikube/make-secrets",
     'MONGODB_IP = "10.96.0.27:27017"', 'MONGODB_IP = "10.96.0.28:27017"', "ports_and_timeouts_agree",
     "10.96.0.28:27017 is not allowed by mp3-config mongodb_host"),
    ("auth_url pointing elsewhere", "k8s/base/app-config.env", "auth_url=http://mp3-auth.", "auth_url=http://mp3-gateway.",
     "ports_and_timeouts_agree", "is not the Service of the SpinApp that runs login"),
    ("a database URL to the wrong port", "k8s/overlays/minikube/make-secrets",
     'MYSQL = f"mysql.{NAMESPACE}.svc.cluster.local:3306"', 'MYSQL = f"mysql.{NAMESPACE}.svc.cluster.local:3307"',
     "ports_and_timeouts_agree", "port 3307 is not a port of Service mysql"),
    ("retry queue arguments that differ", f"{DATA}/rabbitmq/topology.json",
     '"x-dead-letter-routing-key": "mp3" }', '"x-dead-letter-routing-key": "mp3.dead" }',
     "queues_match_topology_rs", "queue mp3.retry: arguments"),
    ("a queue missing from the definitions", f"{DATA}/rabbitmq/topology.json",
     '"name": "video.dead"', '"name": "video.deadletter"', "queues_match_topology_rs", "does not declare queue video.dead"),
    ("KEDA watching another queue", "k8s/components/queue-autoscaling/scaledobject.yaml", "queueName: video",
     "queueName: videos", "queues_match_topology_rs", "scales on queue videos"),
    ("a dashboard metric no worker exports", "k8s/components/monitoring/mp3-dashboard.json",
     "converter_jobs_done_total", "converter_jobs_total", "dashboard_metrics_exist",
     "converter_jobs_total is not a metric the workers export"),
    ("KEDA and the CPU HPA together", "k8s/tests/overlays/fallbacks/kustomization.yaml",
     "  - ../../../components/cpu-autoscaling\n",
     "  - ../../../components/cpu-autoscaling\n  - ../../../components/queue-autoscaling\n",
     "one_autoscaler_per_workload", "Deployment/converter: scaled by several autoscalers at once"),
    ("a converter nothing scales", "k8s/overlays/minikube/kustomization.yaml",
     "  - ../../components/queue-autoscaling\n", "", "one_autoscaler_per_workload", "nothing scales the converter"),
    ("a migration left out of the ConfigMap", "crates/admin/migrations/kustomization.yaml",
     "      - 0003_create_login_failure.sql\n", "", "mysql_schema_is_crates_admin_migrations",
     "does not list 0003_create_login_failure.sql"),
    ("schema_migrations made differently", f"{DATA}/mysql/record-migrations.sh", "version INT UNSIGNED NOT NULL",
     "version INT NOT NULL", "mysql_schema_is_crates_admin_migrations", "creates schema_migrations differently"),
    ("a body size under the upload limit", "k8s/base/ingress.yaml", "proxy-body-size: 2049m", "proxy-body-size: 100m",
     "ingress_streams_uploads_to_the_gateway", "does not match max_upload_bytes"),
    ("a converter /tmp too small for its videos", "k8s/base/workers/converter.yaml", "storage: 29Gi",
     "storage: 26Gi", "converter_tmp_holds_its_largest_videos", "cannot hold 2 videos"),
    ("a converter /tmp in the node's ephemeral storage", "k8s/base/workers/converter.yaml",
     "          ephemeral:\n            volumeClaimTemplate:", "          emptyDir: {}\n          x-was:",
     "converter_tmp_holds_its_largest_videos", "is not a generic ephemeral volume"),
    ("request buffering on", "k8s/base/ingress.yaml", 'proxy-request-buffering: "off"', 'proxy-request-buffering: "on"',
     "ingress_streams_uploads_to_the_gateway", "proxy-request-buffering is not off"),
    ("download links to another host", "k8s/overlays/production/workers.yaml", "value: https://mp3converter.example.com",
     "value: https://other.example.com", "ingress_streams_uploads_to_the_gateway", "is not https:// on the Ingress host"),
    ("no default deny", "k8s/base/network-policies.yaml", "  name: default-deny\nspec:\n  podSelector: {}\n  policyTypes:\n    - Ingress\n    - Egress\n",
     "  name: default-deny\nspec:\n  podSelector: {}\n  policyTypes:\n    - Ingress\n",
     "network_policies_allow_only_the_designed_flows", "no default-deny NetworkPolicy"),
    ("MySQL opened to the gateway instead of auth", f"{DATA}/network-policies.yaml",
     "    - from:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: mp3-auth\n      ports:\n        - protocol: TCP\n          port: 3306",
     "    - from:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: mp3-gateway\n      ports:\n        - protocol: TCP\n          port: 3306",
     "network_policies_allow_only_the_designed_flows", "NetworkPolicies block mp3-auth -> mysql:3306"),
    ("DNS egress removed", "k8s/base/network-policies.yaml", "port: 53\n        - protocol: TCP\n          port: 53", "port: 5353\n        - protocol: TCP\n          port: 5353",
     "network_policies_allow_only_the_designed_flows", "block mp3-gateway -> kube-dns:53"),
    ("SMTP egress for the converter", "k8s/base/network-policies.yaml", "  name: notifier-to-smtp\nspec:\n  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: notifier\n",
     "  name: notifier-to-smtp\nspec:\n  podSelector:\n    matchLabels:\n      app.kubernetes.io/component: worker\n",
     "network_policies_allow_only_the_designed_flows", "allow converter -> smtp-relay:587"),
]


def scratch_checkout(tmp: Path) -> Path:
    root = tmp / "repo"
    for rel in COPY:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, root / rel, ignore=shutil.ignore_patterns("secrets", "target"))
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="only", default="")
    args = parser.parse_args()
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="k8s-check-the-checks-") as tmp:
        pristine = scratch_checkout(Path(tmp))
        for description, file, old, new, check, expected in CASES:
            if args.only and args.only not in description:
                continue
            root = Path(tmp) / "case"
            if root.exists():
                shutil.rmtree(root)
            shutil.copytree(pristine, root, symlinks=True)
            path = root / file
            text = path.read_text()
            problem = None
            if old not in text:
                problem = f"{file} no longer contains the text this case breaks: update the case"
            else:
                path.write_text(text.replace(old, new, 1))
                proc = subprocess.run([sys.executable, str(CHECKER), "--root", str(root), "-k", check],
                                      capture_output=True, text=True)
                report = proc.stdout + proc.stderr
                if proc.returncode == 0 or f"FAIL {check}" not in report:
                    problem = f"{check} did not fail"
                elif expected not in report:
                    problem = f"{check} failed without saying {expected!r}:\n{report}"
            if problem:
                failed += 1
                print(f"FAIL breaking: {description}: {problem}")
            else:
                passed += 1
                print(f"ok   breaking: {description} -> {check} says {expected!r}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
