#!/usr/bin/env python3
"""The manifests on a real control plane: applies the minikube overlay to the API server that
scripts/control-plane runs (kube-apiserver with its admission chain and Pod Security, the
controller-manager, the scheduler, kwok's fake nodes and the SpinKube operator with its
webhooks), checks what a cluster would show, dry-runs the production overlay on the server,
breaks the manifests in known ways to see each break caught, and deletes it all again.

    check_cluster.py [-k TEXT]    # only the break cases whose description contains TEXT

Run through k8s/tests/cluster, which starts the control plane and points KUBECONFIG at it.
Every failure names the object and the rule.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_manifests import (NAMESPACE, NAMESPACE_LABELS, Context, Endpoint, flow_problems,  # noqa: E402
                             outside_endpoints, selector_matches)

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = os.environ.get("KUBECTL", "kubectl")
MINIKUBE = "k8s/overlays/minikube"
PRODUCTION = "k8s/overlays/production"
KINDS = ("pods,deployments,statefulsets,replicasets,services,endpointslices,ingresses,"
         "horizontalpodautoscalers,scaledobjects.keda.sh,poddisruptionbudgets,networkpolicies,"
         "spinapps.core.spinkube.dev,spinappexecutors.core.spinkube.dev,secrets,configmaps,events")
# Warnings that are no fault here: no metrics-server runs, so the HPAs cannot read CPU; and a
# pod waits to be scheduled until its volume claim binds (one that never runs is reported by
# workloads_running, with the scheduler's reason). Any other warning event is a fault.
# The same holds for an HPA that looks before the operator has made its Deployment (the HPAs are
# applied first; autoscalers_target_existing reads their current condition), and for an
# EndpointSlice update that lost a race (services_have_endpoints reads the slices), and for the
# API server's address repair loop when it runs while a Service is being created just after the
# API server started (it checks and keeps the address; services_have_endpoints reads the result).
EXPECTED_WARNINGS = {("Service", "ClusterIPNotAllocated"),
                     ("HorizontalPodAutoscaler", "FailedGetResourceMetric"),
                     ("HorizontalPodAutoscaler", "FailedComputeMetricsReplicas"),
                     ("HorizontalPodAutoscaler", "FailedGetScale"),
                     ("Service", "FailedToUpdateEndpointSlices"),
                     ("Pod", "FailedScheduling")}
# The kinds of KINDS, as objects name them.
SNAPSHOT_KINDS = {"Pod", "Deployment", "StatefulSet", "ReplicaSet", "Service", "EndpointSlice", "Ingress",
                  "HorizontalPodAutoscaler", "ScaledObject", "PodDisruptionBudget", "NetworkPolicy",
                  "SpinApp", "SpinAppExecutor", "Secret", "ConfigMap"}
SETTLE_SECS = 120
CATCH_SECS = 60

GATEWAY = "k8s/base/spin/gateway.yaml"
CONVERTER = "k8s/base/workers/converter.yaml"
POLICIES = "k8s/base/network-policies.yaml"

# (description, file, old, new, what the report must say)
CASES = [
    ("a policy selecting a pod label nobody carries", POLICIES,
     "      app.kubernetes.io/name: notifier\n  policyTypes:",
     "      app.kubernetes.io/name: notifer\n  policyTypes:",
     "NetworkPolicy/notifier-to-smtp: podSelector {'matchLabels': {'app.kubernetes.io/name': 'notifer'}} selects no pod"),
    # Caught by the controller-manager itself, not only by this suite's lookup.
    ("an HPA on a missing Deployment", GATEWAY,
     "    name: mp3-gateway\n  minReplicas: 2", "    name: mp3-gateway-v2\n  minReplicas: 2",
     'HorizontalPodAutoscaler/mp3-gateway: the controller-manager cannot scale its target: '
     'the HPA controller was unable to get the target\'s current scale: deployments.apps "mp3-gateway-v2" not found'),
    ("replicas beside enableAutoscaling", GATEWAY, "  enableAutoscaling: true\n",
     "  enableAutoscaling: true\n  replicas: 2\n",
     "replicas cannot be set when autoscaling is enabled"),
    ("a privileged worker", CONVERTER, "            allowPrivilegeEscalation: false\n",
     "            allowPrivilegeEscalation: true\n            privileged: true\n",
     'violates PodSecurity "baseline'),
]


def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, timeout=300)


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


class Snapshot:
    """Everything in namespace mp3 (one request), plus the nodes."""

    def __init__(self, since: datetime.datetime, expected: list[tuple[str, str]]) -> None:
        out = kubectl("get", "-n", NAMESPACE, "-o", "json", KINDS)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl get failed: {out.stderr.strip()}")
        self.items: list[dict] = json.loads(out.stdout)["items"]
        out = kubectl("get", "nodes", "-o", "json")
        if out.returncode != 0:
            raise RuntimeError(f"kubectl get nodes failed: {out.stderr.strip()}")
        nodes = json.loads(out.stdout)["items"]
        self.fake_nodes = {n["metadata"]["name"] for n in nodes
                           if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"}
        self.since = since
        self.expected = expected

    def of(self, kind: str) -> list[dict]:
        return [o for o in self.items if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict | None:
        return next((o for o in self.of(kind) if o["metadata"]["name"] == name), None)

    def pods_of(self, selector: dict | None) -> list[dict]:
        return [p for p in self.of("Pod") if p["metadata"].get("deletionTimestamp") is None
                and selector_matches(selector, p["metadata"].get("labels", {}))]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def missing_reference(s: Snapshot, value_from: dict) -> str | None:
    for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
        ref = value_from.get(field)
        if ref is None:
            continue
        obj = s.get(kind, ref["name"])
        data = {**(obj or {}).get("data", {}), **(obj or {}).get("stringData", {})}
        if obj is None:
            return f"{kind}/{ref['name']} does not exist"
        if ref["key"] not in data:
            return f"{kind}/{ref['name']} has no key {ref['key']}"
    return None


def spinapps_reconciled(s: Snapshot) -> list[str]:
    problems = []
    for app in s.of("SpinApp"):
        where, name, spec = name_of(app), app["metadata"]["name"], app["spec"]
        dep, svc = s.get("Deployment", name), s.get("Service", name)
        if dep is None or svc is None:
            problems.append(f"{where}: not reconciled: no Deployment or Service {name}")
            continue
        owners = [o["kind"] for o in dep["metadata"].get("ownerReferences", [])]
        if "SpinApp" not in owners:
            problems.append(f"{where}: Deployment/{name} is not owned by the SpinApp")
        executor = s.get("SpinAppExecutor", spec.get("executor", ""))
        if executor is None:
            problems.append(f"{where}: executor {spec.get('executor')} does not exist in the namespace")
            continue
        runtime_class = executor["spec"].get("deploymentConfig", {}).get("runtimeClassName")
        template = dep["spec"]["template"]
        pods = s.pods_of(dep["spec"]["selector"])
        for pod in pods:
            if pod["spec"].get("runtimeClassName") != runtime_class:
                problems.append(f"{where}: pod {pod['metadata']['name']} runs with runtime class "
                                f"{pod['spec'].get('runtimeClassName')}, not the executor's {runtime_class}")
            labels = pod["metadata"].get("labels", {})
            for k, v in spec.get("podLabels", {}).items():
                if labels.get(k) != v:
                    problems.append(f"{where}: pod {pod['metadata']['name']} lacks podLabel {k}={v}")
        env = env_of(template["spec"]["containers"][0])
        for var in spec.get("variables", []):
            got = env.get(f"SPIN_VARIABLE_{var['name'].upper()}")
            want = {"value": var.get("value"), "valueFrom": var.get("valueFrom")}
            if got is None or {"value": got.get("value"), "valueFrom": got.get("valueFrom")} != want:
                problems.append(f"{where}: variable {var['name']} is not passed as SPIN_VARIABLE_{var['name'].upper()}")
            elif var.get("valueFrom") and (missing := missing_reference(s, var["valueFrom"])):
                problems.append(f"{where}: variable {var['name']}: {missing}")
        components = ",".join(spec.get("components", []))
        if components and env.get("SPIN_COMPONENTS_TO_RETAIN", {}).get("value") != components:
            problems.append(f"{where}: SPIN_COMPONENTS_TO_RETAIN is not {components}")
        if "memory" in spec.get("invocationLimits", {}) and "SPIN_MAX_INSTANCE_MEMORY" not in env:
            problems.append(f"{where}: invocationLimits.memory is not passed as SPIN_MAX_INSTANCE_MEMORY")
        if app.get("status", {}).get("readyReplicas", 0) < 1:
            problems.append(f"{where}: no ready replica in its status")
    return problems


def workloads_running(s: Snapshot) -> list[str]:
    problems = []
    for w in s.of("Deployment") + s.of("StatefulSet"):
        where, st = name_of(w), w.get("status", {})
        want = w["spec"].get("replicas", 1)
        for cond in st.get("conditions", []):
            if cond["type"] == "ReplicaFailure" and cond["status"] == "True":
                problems.append(f"{where}: {cond.get('message', cond.get('reason'))}")
        if st.get("observedGeneration") != w["metadata"]["generation"]:
            problems.append(f"{where}: generation {w['metadata']['generation']} not yet observed")
        elif st.get("readyReplicas", 0) != want or st.get("updatedReplicas", 0) != want:
            problems.append(f"{where}: {st.get('readyReplicas', 0)} ready and {st.get('updatedReplicas', 0)} "
                            f"updated of {want} replicas")
    for pod in s.of("Pod"):
        where = name_of(pod)
        if pod["metadata"].get("deletionTimestamp"):
            continue
        node, phase = pod["spec"].get("nodeName"), pod.get("status", {}).get("phase")
        if phase != "Running" or not pod.get("status", {}).get("podIP"):
            why = "; ".join(c.get("message", "") for c in pod.get("status", {}).get("conditions", [])
                            if c.get("status") == "False" and c.get("message"))
            problems.append(f"{where}: {phase} without an address{': ' + why if why else ''}")
        elif node not in s.fake_nodes:
            problems.append(f"{where}: runs on {node}, not on a kwok node")
    return problems


def services_have_endpoints(s: Snapshot) -> list[str]:
    problems = []
    for svc in s.of("Service"):
        where, spec = name_of(svc), svc["spec"]
        if spec.get("type") == "ExternalName":
            continue
        if not spec.get("selector"):
            problems.append(f"{where}: has no selector, so no endpoints are kept for it")
            continue
        slices = [e for e in s.of("EndpointSlice")
                  if e["metadata"].get("labels", {}).get("kubernetes.io/service-name") == svc["metadata"]["name"]]
        ready = [a for e in slices if e.get("ports") for ep in e.get("endpoints") or []
                 if ep.get("conditions", {}).get("ready") for a in ep.get("addresses", [])]
        if not ready:
            problems.append(f"{where}: no ready endpoint with ports (selector {spec['selector']})")
    for ing in s.of("Ingress"):
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"].get("service", {})
                svc = s.get("Service", backend.get("name", ""))
                port = backend.get("port", {})
                if svc is None:
                    problems.append(f"{name_of(ing)}: backend Service/{backend.get('name')} does not exist")
                elif not any((p.get("port") == port["number"]) if "number" in port else
                             (p.get("name") == port.get("name"))
                             for p in svc["spec"].get("ports", [])):
                    problems.append(f"{name_of(ing)}: Service/{backend['name']} has no port {port}")
    return problems


def autoscalers_target_existing(s: Snapshot) -> list[str]:
    problems = []
    for hpa in s.of("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if s.get(ref["kind"], ref["name"]) is None:
            problems.append(f"{name_of(hpa)}: its target {ref['kind']}/{ref['name']} does not exist")
        able = next((c for c in (hpa.get("status") or {}).get("conditions") or []
                     if c.get("type") == "AbleToScale"), None)
        if able is None or able.get("status") != "True":
            problems.append(f"{name_of(hpa)}: the controller-manager cannot scale its target: "
                            f"{(able or {}).get('message', 'no AbleToScale condition yet')}")
    for so in s.of("ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        kind = ref.get("kind", "Deployment")
        if s.get(kind, ref["name"]) is None:
            problems.append(f"{name_of(so)}: its target {kind}/{ref['name']} does not exist")
    return problems


def pdbs_select_pods(s: Snapshot) -> list[str]:
    problems = []
    for pdb in s.of("PodDisruptionBudget"):
        selected = {p["metadata"]["name"] for p in s.pods_of(pdb["spec"].get("selector"))}
        # Each budget protects the workload of its name (the SpinApps' Deployments included).
        owner = s.get("Deployment", pdb["metadata"]["name"]) or s.get("StatefulSet", pdb["metadata"]["name"])
        protected = {p["metadata"]["name"] for p in s.pods_of(owner["spec"]["selector"])} if owner else set()
        if not selected:
            problems.append(f"{name_of(pdb)}: selects no pod")
        elif owner is None:
            problems.append(f"{name_of(pdb)}: no Deployment or StatefulSet of its name to protect")
        elif selected != protected:
            problems.append(f"{name_of(pdb)}: selects {sorted(selected)}, not the pods of "
                            f"{name_of(owner)} {sorted(protected)}")
        elif pdb.get("status", {}).get("expectedPods", 0) < 1:
            problems.append(f"{name_of(pdb)}: the disruption controller counts no pod for it")
    return problems


def live_endpoints(s: Snapshot) -> dict[str, Endpoint]:
    """Each workload as its first running pod shows it: real labels, real named ports."""
    eps = {}
    for w in s.of("Deployment") + s.of("StatefulSet"):
        pods = [p for p in s.pods_of(w["spec"]["selector"]) if p.get("status", {}).get("phase") == "Running"]
        if pods:
            pod = pods[0]
            ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"]
                     for p in c.get("ports", []) if "name" in p}
            eps[w["metadata"]["name"]] = Endpoint(w["metadata"]["name"], NAMESPACE,
                                                  pod["metadata"].get("labels", {}), ports)
    eps.update(outside_endpoints())
    return eps


def network_policies_hold(s: Snapshot) -> list[str]:
    problems = []
    policies = s.of("NetworkPolicy")
    for pol in policies:
        if not s.pods_of(pol["spec"]["podSelector"]):
            problems.append(f"{name_of(pol)}: podSelector {pol['spec']['podSelector']} selects no pod")
        for direction, key in (("ingress", "from"), ("egress", "to")):
            for rule in pol["spec"].get(direction) or []:
                for peer in rule.get(key) or []:
                    ns_sel = peer.get("namespaceSelector")
                    here = ns_sel is None or selector_matches(ns_sel, NAMESPACE_LABELS[NAMESPACE])
                    if "podSelector" in peer and here and not s.pods_of(peer["podSelector"]):
                        problems.append(f"{name_of(pol)}: {direction} peer {peer['podSelector']} selects no pod")
    eps = live_endpoints(s)
    missing = [w for w in ("mp3-gateway", "mp3-auth", "converter", "notifier") if w not in eps]
    if missing:
        return problems + [f"no running pod of {', '.join(missing)}: the flows cannot be evaluated"]
    return problems + flow_problems(policies, eps, NAMESPACE_LABELS)


def nothing_refused(s: Snapshot) -> list[str]:
    problems = []
    for ev in s.of("Event"):
        when = ev.get("lastTimestamp") or ev.get("eventTime") or ev["metadata"]["creationTimestamp"]
        stamp = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
        obj = ev["involvedObject"]
        reason = ev.get("reason", "")
        if ev.get("type") != "Warning" or stamp < s.since or (obj.get("kind"), reason) in EXPECTED_WARNINGS:
            continue
        problems.append(f"{obj.get('kind')}/{obj.get('name')}: {reason}: {ev.get('message', '').strip()}")
    return problems


def every_object_exists(s: Snapshot) -> list[str]:
    missing = [f"{kind}/{name}" for kind, name in s.expected
               if not any(o["kind"] == kind and o["metadata"]["name"] == name for o in s.items)]
    return [f"{m}: applied but not in the cluster" for m in missing]


CHECKS = [every_object_exists, spinapps_reconciled, workloads_running, services_have_endpoints, autoscalers_target_existing,
          pdbs_select_pods, network_policies_hold, nothing_refused]


def now() -> datetime.datetime:
    # Event times have a resolution of one second.
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def evaluate(since: datetime.datetime, expected: list[tuple[str, str]]) -> dict[str, list[str]]:
    s = Snapshot(since, expected)
    return {fn.__name__: fn(s) for fn in CHECKS}


def settle(since: datetime.datetime, expected: list[tuple[str, str]], timeout: float) -> dict[str, list[str]]:
    """Polls until every check passes or the timeout ends; returns the last findings."""
    deadline = time.monotonic() + timeout
    while True:
        found = evaluate(since, expected)
        if not any(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(2)


def apply(checkout: Path) -> tuple[bool, str]:
    """kubectl apply -k; a refusal or any warning (Pod Security's included) is reported.

    The operator's webhook looks executors up in a cache, which a SpinApp sent right after its
    executor can beat: that one refusal is retried once, as the README tells users to."""
    out = kubectl("apply", "-k", str(checkout / MINIKUBE))
    if out.returncode != 0 and "executor does not exist in namespace" in out.stderr:
        print("     (the webhook had not seen the new executor yet: applying again)")
        out = kubectl("apply", "-k", str(checkout / MINIKUBE))
    warnings = [line for line in out.stderr.splitlines() if line.startswith("Warning:")]
    return out.returncode == 0 and not warnings, (out.stderr.strip() or out.stdout.strip())


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def result(self, name: str, problems: list[str]) -> None:
        if problems:
            self.failed += 1
            print(f"FAIL {name}")
            for p in problems:
                print(f"     {p}")
        else:
            print(f"ok   {name}")
        sys.stdout.flush()


def break_cases(report: Report, good: Path, work: Path, expected: list[tuple[str, str]], only: str) -> None:
    cases = [c for c in CASES if not only or only in c[0]]
    if not cases:
        report.result(f"break cases matching {only!r}", ["none matches"])
        return
    for description, rel, old, new, expect in cases:
        name = f"caught: {description}"
        broken = work / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(good, broken)
        path = broken / rel
        text = path.read_text()
        if old not in text:
            report.result(name, [f"{rel} no longer contains the text this case breaks: update the case"])
            continue
        path.write_text(text.replace(old, new, 1))
        since = now()
        ok, output = apply(broken)
        seen = [] if ok else [f"kubectl apply: {output}"]
        deadline = time.monotonic() + CATCH_SECS
        while not any(expect in p for p in seen) and time.monotonic() < deadline:
            seen = [p for found in evaluate(since, expected).values() for p in found] + seen
            if not any(expect in p for p in seen):
                time.sleep(2)
        if any(expect in p for p in seen):
            report.result(name, [])
        else:
            report.result(name, [f"nothing reported {expect!r} within {CATCH_SECS}s; reported: {seen[:5]}"])
        restored, output = apply(good)
        if not restored:
            report.result(f"restored after: {description}", [f"kubectl apply of the good manifests: {output}"])
    # Each case was undone by applying the good manifests again: the cluster must show it.
    since = now()
    for check, problems in settle(since, expected, SETTLE_SECS).items():
        if problems:
            report.result(f"after the break cases, {check}", problems)


def namespace_gone(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while kubectl("get", "namespace", NAMESPACE, "-o", "name").returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(2)
    return True


def deploy_and_check(report: Report, ctx: Context, work: Path, only: str) -> None:
    good = ctx.work
    expected = [(o["kind"], o["metadata"]["name"]) for o in ctx.objects(MINIKUBE) if o["kind"] in SNAPSHOT_KINDS]
    started = time.monotonic()
    since = now()
    ok, output = apply(good)
    report.result("minikube overlay applied without a refusal or warning", [] if ok else [output])
    settled = settle(since, expected, SETTLE_SECS)
    for check, problems in settled.items():
        report.result(check, problems)
    print(f"     ({len(expected)} objects applied; settled in {time.monotonic() - started:.0f}s)")

    # Against the live namespace, so the SpinApps' executor exists, as it would when production is
    # deployed. A dry run makes no pods: Pod Security judges the production pod templates only
    # through its warnings, which fail this too.
    out = kubectl("apply", "-k", str(good / PRODUCTION), "--dry-run=server")
    warnings = [line for line in out.stderr.splitlines() if line.startswith("Warning:")]
    report.result("production overlay passes a server-side dry run",
                  [] if out.returncode == 0 and not warnings else [out.stderr.strip()])

    if any(settled.values()):
        report.result("break cases", ["not run: the good manifests did not settle, so a catch would prove nothing"])
    else:
        break_cases(report, good, work, expected, only)


def delete_and_check(report: Report, good: Path) -> None:
    out = kubectl("delete", "-k", str(good / MINIKUBE), "--ignore-not-found", "--wait=true", "--timeout=180s")
    problems = [] if out.returncode == 0 else [f"kubectl delete -k failed: {out.stderr.strip()}"]
    if not namespace_gone(180):
        problems.append(f"namespace {NAMESPACE} is still there after 180s")
    left = kubectl("get", "spinapps,deployments,statefulsets,pods,services,persistentvolumeclaims",
                   "-A", "-l", "app.kubernetes.io/part-of=mp3-converter", "-o", "name").stdout.split()
    problems += [f"left behind: {x}" for x in left]
    report.result("kubectl delete -k leaves nothing behind", problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="only", default="")
    args = parser.parse_args()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="k8s-cluster-") as tmp:
        work = Path(tmp)
        # A scratch copy with the minikube overlay's secrets written next to it, and its render.
        ctx = Context(ROOT, work / "good")
        if ctx.render_errors:
            report.result("the overlays render", [f"{o}: {e}" for o, e in ctx.render_errors.items()])
            return 1
        # A run that crashed may have left its namespace: the first apply must meet an empty one.
        if kubectl("get", "namespace", NAMESPACE, "-o", "name").returncode == 0:
            print(f"     (namespace {NAMESPACE} left by an earlier run: deleting it first)")
            kubectl("delete", "namespace", NAMESPACE, "--wait=false")
            if not namespace_gone(180):
                report.result("a clean start", [f"namespace {NAMESPACE} could not be deleted"])
                return 1
        try:
            deploy_and_check(report, ctx, work, args.only)
        finally:
            delete_and_check(report, ctx.work)
    print(f"{report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
