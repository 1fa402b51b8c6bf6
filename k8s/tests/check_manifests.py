#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests and the worker Dockerfiles.

Renders every overlay with kustomize, validates built-in kinds against the Kubernetes schemas
(kubernetes-validate, pinned version) and custom resources against the vendored CRDs
(k8s/tests/crds), applies the security and operability policy, and checks that names, ports,
queues and variables agree with what the code reads (spin.toml, crates/model/src/topology.rs,
the workers' `env = "..."` attributes, crates/admin). Every failure names the object and the
rule. Run through k8s/tests/run, which installs the tools.

    check_manifests.py [--root DIR] [-k NAME]

--root checks another checkout (the tests of these tests break a copy on purpose); -k runs only
the checks whose name contains NAME.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.37.0"
NAMESPACE = "mp3"
OVERLAYS = ["k8s/overlays/minikube", "k8s/overlays/production", "k8s/tests/overlays/fallbacks"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# Custom resources and the vendored CRD file that defines each.
CRD_FILES = {
    "SpinApp": "core.spinkube.dev_spinapps.yaml",
    "SpinAppExecutor": "core.spinkube.dev_spinappexecutors.yaml",
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
}
# Workers: the Deployment, the folders whose Rust sources declare the env it reads.
WORKERS = {
    "converter": ["sidecars/converter/src", "crates/worker/src"],
    "notifier": ["sidecars/notifier/src", "crates/worker/src"],
}
PLACEHOLDER = re.compile(r"^(|change[-_ ]?me.*|replace[-_ ]?me.*|placeholder.*|<[^>]*>|example.*|x+)$",
                         re.IGNORECASE)


class Check:
    """Collects the problems of one check; each names the object and the rule."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, rule: str) -> None:
        self.problems.append(f"{where}: {rule}")


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# ------------------------------------------------------------------ context


class Context:
    """The checkout under test, its rendered overlays and what the code says."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        # The pinned one that scripts/k8s-tools installs, else whatever is on PATH.
        pinned = Path(__file__).resolve().parents[2] / ".dev/k8s-tools/bin/kustomize"
        self.kustomize = str(pinned) if pinned.exists() else shutil.which("kustomize")
        self.rendered: dict[str, list[dict]] = {}
        self.render_errors: dict[str, str] = {}
        self._prepare()

    def _prepare(self) -> None:
        # Render a copy: the minikube overlay needs its git-ignored secrets, which are written
        # into the copy by its own make-secrets script, never into the checkout.
        for rel in ["k8s", "crates/admin/migrations"]:
            shutil.copytree(self.root / rel, self.work / rel,
                            ignore=shutil.ignore_patterns("secrets"))
        subprocess.run([sys.executable, str(self.work / "k8s/overlays/minikube/make-secrets"),
                        "--out", str(self.work / "k8s/overlays/minikube/secrets")],
                       check=True, stderr=subprocess.DEVNULL)
        for overlay in OVERLAYS:
            self.rendered[overlay] = self.render(overlay)

    def render(self, overlay: str) -> list[dict]:
        if not self.kustomize:
            self.render_errors[overlay] = "kustomize is not on PATH (run scripts/k8s-tools install)"
            return []
        proc = subprocess.run([self.kustomize, "build", str(self.work / overlay)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            self.render_errors[overlay] = proc.stderr.strip()
            return []
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    def objects(self, overlay: str, kind: str | None = None) -> list[dict]:
        return [o for o in self.rendered.get(overlay, []) if kind is None or o["kind"] == kind]

    def find(self, overlay: str, kind: str, name: str) -> dict | None:
        for o in self.objects(overlay, kind):
            if o["metadata"]["name"] == name:
                return o
        return None

    def all_objects(self):
        for overlay in OVERLAYS:
            for obj in self.objects(overlay):
                yield overlay, obj

    # What the code says.
    def spin_manifest(self) -> dict:
        return tomllib.loads((self.root / "spin.toml").read_text())

    def rust_sources(self, folders: list[str]) -> str:
        text = []
        for folder in folders:
            for path in sorted((self.root / folder).rglob("*.rs")):
                text.append(path.read_text())
        return "\n".join(text)


def configmap_value(ctx: Context, overlay: str, name: str, key: str) -> str | None:
    # Generated ConfigMaps may carry a hash suffix.
    for cm in ctx.objects(overlay, "ConfigMap"):
        n = cm["metadata"]["name"]
        if n == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", n):
            return (cm.get("data") or {}).get(key)
    return None


def secret_value(ctx: Context, overlay: str, name: str, key: str) -> str | None:
    s = ctx.find(overlay, "Secret", name)
    if s is None:
        return None
    if key in (s.get("stringData") or {}):
        return s["stringData"][key]
    if key in (s.get("data") or {}):
        return base64.b64decode(s["data"][key]).decode()
    return None


def env_value(ctx: Context, overlay: str, env: dict) -> str | None:
    if "value" in env:
        return env["value"]
    ref = env.get("valueFrom", {})
    if "configMapKeyRef" in ref:
        return configmap_value(ctx, overlay, ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
    if "secretKeyRef" in ref:
        return secret_value(ctx, overlay, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
    return None


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def container_env(obj: dict, container: str) -> dict[str, dict]:
    for c in pod_spec(obj)["containers"]:
        if c["name"] == container:
            return {e["name"]: e for e in c.get("env", [])}
    return {}


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


# ------------------------------------------------------------------ rendering and schemas


@check
def every_overlay_renders(ctx: Context, c: Check) -> None:
    for overlay in OVERLAYS:
        if overlay in ctx.render_errors:
            c.fail(overlay, f"kustomize build fails: {ctx.render_errors[overlay]}")
        elif not ctx.rendered[overlay]:
            c.fail(overlay, "renders no object")


@check
def everything_in_namespace_mp3(ctx: Context, c: Check) -> None:
    for overlay, obj in ctx.all_objects():
        if obj["kind"] == "Namespace":
            continue
        if obj["metadata"].get("namespace") != NAMESPACE:
            c.fail(f"{overlay} {name_of(obj)}", f"must be in namespace {NAMESPACE}")


@check
def builtin_kinds_match_kubernetes_schemas(ctx: Context, c: Check) -> None:
    for overlay, obj in ctx.all_objects():
        if obj["kind"] in CRD_FILES:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            c.fail(f"{overlay} {name_of(obj)}",
                   f"no Kubernetes {KUBERNETES_VERSION} schema for {obj['apiVersion']} {obj['kind']}"
                   " and no vendored CRD in k8s/tests/crds")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            c.fail(f"{overlay} {name_of(obj)}", f"Kubernetes {KUBERNETES_VERSION} schema: {path}: {e.message}")


def strict_schema(schema):
    """The CRD schema as the API server's strict field validation applies it: objects with
    `properties` reject unknown fields unless they preserve them."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@check
def custom_resources_match_vendored_crds(ctx: Context, c: Check) -> None:
    crds = {}
    for kind, file in CRD_FILES.items():
        crd = yaml.safe_load((ctx.root / "k8s/tests/crds" / file).read_text())
        crds[kind] = crd
    for overlay, obj in ctx.all_objects():
        kind = obj["kind"]
        if kind not in CRD_FILES:
            continue
        crd = crds[kind]
        group, _, version = obj["apiVersion"].partition("/")
        where = f"{overlay} {name_of(obj)}"
        if group != crd["spec"]["group"] or crd["spec"]["names"]["kind"] != kind:
            c.fail(where, f"apiVersion {obj['apiVersion']} is not the CRD's group {crd['spec']['group']}")
            continue
        versions = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served", True)}
        if version not in versions:
            c.fail(where, f"version {version} is not served by the CRD (served: {', '.join(versions)})")
            continue
        schema = strict_schema(versions[version]["schema"]["openAPIV3Schema"])
        # metadata is validated by the API server itself, not by the CRD schema.
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}
        schema["properties"].setdefault("apiVersion", {"type": "string"})
        schema["properties"].setdefault("kind", {"type": "string"})
        validator = jsonschema.Draft7Validator(schema)
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
            path = "/".join(str(p) for p in err.path)
            c.fail(where, f"CRD schema: {path}: {err.message}")


# ------------------------------------------------------------------ policy


def image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image} has no tag"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image} uses the tag latest"
    return None


@check
def workloads_have_resources_probes_and_pinned_images(ctx: Context, c: Check) -> None:
    for overlay, obj in ctx.all_objects():
        where = f"{overlay} {name_of(obj)}"
        if obj["kind"] == "SpinApp":
            spec = obj["spec"]
            if problem := image_problem(spec["image"]):
                c.fail(where, problem)
            res = spec.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        c.fail(where, f"no resources.{part}.{r}")
            for probe in ("readiness", "liveness"):
                if "httpGet" not in spec.get("checks", {}).get(probe, {}):
                    c.fail(where, f"no checks.{probe}.httpGet")
            # One request must not be able to take the pod's memory: the operator turns this
            # into SPIN_MAX_INSTANCE_MEMORY (the black-box tests run under the same 64 MiB).
            if "memory" not in spec.get("invocationLimits", {}):
                c.fail(where, "no invocationLimits.memory: one request could use the whole pod")
            if not spec.get("enableAutoscaling"):
                c.fail(where, "enableAutoscaling is off")
            elif "replicas" in spec:
                c.fail(where, "sets replicas with enableAutoscaling on (the operator ignores it; "
                       "the HorizontalPodAutoscaler's minReplicas/maxReplicas set the count)")
            hpas = [h for h in ctx.objects(overlay, "HorizontalPodAutoscaler")
                    if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                       "name": obj["metadata"]["name"]}]
            if spec.get("enableAutoscaling") and not hpas:
                c.fail(where, "no HorizontalPodAutoscaler scales its Deployment")
            continue
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(obj)
        for cont in spec.get("initContainers", []) + spec["containers"]:
            cw = f"{where} container {cont['name']}"
            if problem := image_problem(cont["image"]):
                c.fail(cw, problem)
            res = cont.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        c.fail(cw, f"no resources.{part}.{r}")
        for cont in spec["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in cont:
                    c.fail(f"{where} container {cont['name']}", f"no {probe}")


@check
def workloads_run_locked_down(ctx: Context, c: Check) -> None:
    for overlay, obj in ctx.all_objects():
        where = f"{overlay} {name_of(obj)}"
        if obj["kind"] == "SpinApp":
            # No securityContext field in SpinApp; the API token is still worth keeping out.
            sa = ctx.find(overlay, "ServiceAccount", obj["spec"].get("serviceAccountName", "default"))
            if sa is None or sa.get("automountServiceAccountToken") is not False:
                c.fail(where, "mounts a Kubernetes API token: give it a ServiceAccount with "
                       "automountServiceAccountToken: false")
            continue
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(obj)
        pod_sc = spec.get("securityContext", {})
        sa = ctx.find(overlay, "ServiceAccount", spec.get("serviceAccountName", "default"))
        if spec.get("automountServiceAccountToken", (sa or {}).get("automountServiceAccountToken")) is not False:
            c.fail(where, "mounts a Kubernetes API token: set automountServiceAccountToken: false")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            c.fail(where, "uses the host's network, PID or IPC namespace")
        for cont in spec.get("initContainers", []) + spec["containers"]:
            sc = cont.get("securityContext", {})
            cw = f"{where} container {cont['name']}"
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if non_root is not True:
                c.fail(cw, "runs as root: runAsNonRoot is not true")
            if user == 0:
                c.fail(cw, "runs as root: runAsUser is 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                c.fail(cw, "writable root filesystem: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                c.fail(cw, "allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                c.fail(cw, "privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                c.fail(cw, "capabilities are not all dropped (drop: [ALL])")
            if sc.get("capabilities", {}).get("add"):
                c.fail(cw, f"adds capabilities {sc['capabilities']['add']}")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                c.fail(cw, "seccompProfile is not RuntimeDefault")


def committed_yaml_documents(root: Path):
    for path in sorted((root / "k8s").rglob("*.y*ml")):
        if "secrets" in path.relative_to(root).parts:
            continue
        try:
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict):
                    yield path.relative_to(root), doc
        except yaml.YAMLError:
            continue


@check
def secrets_in_git_are_placeholders(ctx: Context, c: Check) -> None:
    # No Secret object with a real-looking value in any manifest under k8s/ (the base included).
    for path, doc in committed_yaml_documents(ctx.root):
        if doc.get("kind") != "Secret":
            continue
        values = dict(doc.get("stringData") or {})
        for k, v in (doc.get("data") or {}).items():
            try:
                values[k] = base64.b64decode(v).decode()
            except Exception:
                values[k] = v
        for k, v in values.items():
            if not PLACEHOLDER.match(str(v)):
                c.fail(f"{path} {name_of(doc)} key {k}",
                       "looks like a real secret; commit placeholders only (CHANGE-ME) and "
                       "create real values with kubectl create secret or a git-ignored secretGenerator file")
    # The base renders no Secret at all: every environment brings its own.
    base = ctx.render("k8s/base")
    for obj in base:
        if obj["kind"] == "Secret":
            c.fail(f"k8s/base {name_of(obj)}", "the base must not carry Secrets")
    # Files that secretGenerators read are git-ignored.
    for kfile in sorted((ctx.root / "k8s").rglob("kustomization.yaml")):
        kust = yaml.safe_load(kfile.read_text()) or {}
        for gen in kust.get("secretGenerator", []):
            for entry in gen.get("envs", []) + gen.get("files", []):
                rel = entry.split("=", 1)[-1]
                target = (kfile.parent / rel).relative_to(ctx.root)
                ignored = subprocess.run(["git", "-C", str(ctx.root), "check-ignore", "-q", "--no-index",
                                          str(target)]).returncode == 0
                if not ignored:
                    c.fail(f"{kfile.relative_to(ctx.root)} secretGenerator {gen['name']}",
                           f"{target} is not git-ignored")
    # Plain-text SpinApp values never stand in for a secret variable used by the app's components.
    spin = ctx.spin_manifest()
    for overlay in OVERLAYS:
        for app in ctx.objects(overlay, "SpinApp"):
            used = variables_used_by(spin, app["spec"].get("components", []))
            for var in app["spec"].get("variables", []):
                decl = spin.get("variables", {}).get(var["name"], {})
                if decl.get("secret") and var["name"] in used and "value" in var:
                    c.fail(f"{overlay} {name_of(app)} variable {var['name']}",
                           "a secret variable in plain text; use valueFrom.secretKeyRef")


# ------------------------------------------------------------------ Dockerfiles


def dockerfile_stages(text: str) -> list[dict]:
    """The stages of a Dockerfile: each FROM's image and name, and its instructions, with
    continuation lines joined and comments dropped."""
    lines, current = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        current.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            lines.append(" ".join(current))
            current = []
    stages = []
    for line in lines:
        instr, _, rest = line.partition(" ")
        if instr.upper() == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            stages.append({"from": words[0], "as": words[2] if len(words) > 2 and words[1].upper() == "AS" else None,
                           "lines": []})
        elif stages:
            stages[-1]["lines"].append((instr.upper(), rest))
    return stages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches decides; `!` re-includes. A pattern that
    matches a folder matches everything under it."""
    excluded = False
    parts = path.split("/")
    for pat in patterns:
        negate = pat.startswith("!")
        p = pat[1:] if negate else pat
        p = p.strip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(part, p[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, p) for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


@check
def dockerfiles_are_multistage_pinned_and_non_root(ctx: Context, c: Check) -> None:
    for worker in WORKERS:
        path = ctx.root / "sidecars" / worker / "Dockerfile"
        where = str(path.relative_to(ctx.root))
        if not path.exists():
            c.fail(where, "missing")
            continue
        stages = dockerfile_stages(path.read_text())
        if len(stages) < 2:
            c.fail(where, "not multi-stage: build in one stage, copy the binary into a small one")
        names = {s["as"] for s in stages if s["as"]}
        for s in stages:
            if s["from"] in names:
                continue
            if problem := image_problem(s["from"]):
                c.fail(where, f"FROM {s['from']}: {problem}")
        for s in stages:
            for instr, rest in s["lines"]:
                if instr == "RUN" and re.search(r"\bapt-get\s+install\b", rest):
                    if "--no-install-recommends" not in rest:
                        c.fail(where, f"apt-get install without --no-install-recommends: {rest[:60]}")
                    if "rm -rf /var/lib/apt/lists/*" not in rest:
                        c.fail(where, "apt-get install without rm -rf /var/lib/apt/lists/* in the same RUN")
                if instr == "RUN" and re.search(r"\bapt-get\s+upgrade\b", rest):
                    c.fail(where, "apt-get upgrade: pin the base image instead")
        build_runs = " ".join(rest for s in stages for instr, rest in s["lines"] if instr == "RUN")
        if not re.search(rf"cargo build\b[^&]*--release[^&]*-p {worker}\b", build_runs):
            c.fail(where, f"does not run cargo build --release -p {worker}")
        final = stages[-1] if stages else {"lines": []}
        users = [rest.strip() for instr, rest in final["lines"] if instr == "USER"]
        if not users:
            c.fail(where, "final stage has no USER: it would run as root")
        elif users[-1].split(":")[0] in ("0", "root"):
            c.fail(where, f"final stage runs as {users[-1]}")
        elif not users[-1].split(":")[0].isdigit():
            c.fail(where, "USER is not numeric: Kubernetes' runAsNonRoot cannot verify a name")
        if worker == "converter":
            final_runs = " ".join(rest for instr, rest in final["lines"] if instr == "RUN")
            # Among apt-get install's packages, not merely named (the stage also locks it down).
            if not re.search(r"apt-get install[^&;]*\sffmpeg(\s|$)", final_runs):
                c.fail(where, "the final stage does not install ffmpeg")
            # Executable but unreadable, so every ffmpeg is undumpable (converter Dockerfile).
            if not re.search(r"chmod 0?711 /usr/bin/ffmpeg", final_runs):
                c.fail(where, "ffmpeg is left readable: the ffmpeg processes could read one another's /proc")
    ignore = ctx.root / ".dockerignore"
    if not ignore.exists():
        c.fail(".dockerignore", "missing: the build context would carry target/ and .dev/")
        return
    patterns = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
    members = tomllib.loads((ctx.root / "Cargo.toml").read_text())["workspace"]["members"]
    for needed in ["Cargo.toml", "Cargo.lock"] + [f"{m}/Cargo.toml" for m in members] + \
            [f"{m}/src/main.rs" for m in ("sidecars/converter", "sidecars/notifier")]:
        if dockerignore_excludes(patterns, needed):
            c.fail(".dockerignore", f"excludes {needed}, which cargo needs to build the workers")
    for private in [".dev/secrets.env", "target/release/x", "k8s/overlays/minikube/secrets/mysql.env", ".git/config"]:
        if not dockerignore_excludes(patterns, private):
            c.fail(".dockerignore", f"lets {private} into the build context")


# ------------------------------------------------------------------ consistency with the code


def template_vars(text: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([a-z0-9_]+)\s*\}\}", text))


def variables_used_by(spin: dict, components: list[str]) -> set[str]:
    used = set()
    for comp in components:
        decl = spin.get("component", {}).get(comp, {})
        for v in (decl.get("variables") or {}).values():
            used |= template_vars(str(v))
        for h in decl.get("allowed_outbound_hosts", []):
            used |= template_vars(h)
    return used


@check
def spinapps_match_spin_toml(ctx: Context, c: Check) -> None:
    spin = ctx.spin_manifest()
    declared = spin.get("variables", {})
    components = set(spin.get("component", {}))
    for overlay in OVERLAYS:
        apps = ctx.objects(overlay, "SpinApp")
        seen: dict[str, str] = {}
        for app in apps:
            where = f"{overlay} {name_of(app)}"
            selected = app["spec"].get("components") or []
            if not selected:
                c.fail(where, "selects no components: it would run all of them")
            for comp in selected:
                if comp not in components:
                    c.fail(where, f"component {comp} is not in spin.toml")
                if comp in seen:
                    c.fail(where, f"component {comp} also runs in {seen[comp]}")
                seen[comp] = app["metadata"]["name"]
            provided = {v["name"]: v for v in app["spec"].get("variables", [])}
            used = variables_used_by(spin, selected)
            for name, var in provided.items():
                if name not in declared:
                    c.fail(f"{where} variable {name}", "is not a variable in spin.toml [variables]")
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    if configmap_value(ctx, overlay, r["name"], r["key"]) is None:
                        c.fail(f"{where} variable {name}", f"ConfigMap {r['name']} has no key {r['key']}")
                if "secretKeyRef" in ref and ctx.objects(overlay, "Secret"):
                    r = ref["secretKeyRef"]
                    if secret_value(ctx, overlay, r["name"], r["key"]) is None:
                        c.fail(f"{where} variable {name}", f"Secret {r['name']} has no key {r['key']}")
                if "secretKeyRef" in ref and name not in used:
                    c.fail(f"{where} variable {name}",
                           "gets a secret that none of its components uses (least privilege)")
            for name, decl in declared.items():
                if decl.get("required") and name not in provided:
                    c.fail(where, f"required variable {name} is not set (Spin refuses to start)")
                if name in used and decl.get("secret") and "secretKeyRef" not in provided.get(name, {}).get("valueFrom", {}):
                    c.fail(where, f"secret variable {name} does not come from a Secret (valueFrom.secretKeyRef)")
                default = str(decl.get("default", ""))
                if name in used and name not in provided and re.search(r"127\.0\.0\.1|localhost|self\.alt", default):
                    c.fail(where, f"variable {name} keeps its local default {default!r}; set it for the cluster")
            # Key-value stores: every label its components open must be defined for the pod,
            # and in memory (a `spin` store without a path): the root filesystem is read-only,
            # and what the gateway keeps there (derived MongoDB keys) must not land on disk.
            stores = {s.get("name"): s for s in app["spec"].get("runtimeConfig", {}).get("keyValueStores", [])}
            for comp in selected:
                for label in spin.get("component", {}).get(comp, {}).get("key_value_stores", []):
                    store = stores.get(label)
                    if store is None:
                        c.fail(where, f"component {comp} opens key-value store {label!r}, which runtimeConfig.keyValueStores does not define")
                    elif store.get("type") != "spin" or any(o.get("name") == "path" for o in store.get("options", [])):
                        c.fail(where, f"key-value store {label!r} is not an in-memory `spin` store")
        if apps:
            missing = components - set(seen)
            for comp in sorted(missing):
                c.fail(overlay, f"spin.toml component {comp} runs in no SpinApp")


@check
def executors_apply_before_their_spinapps(ctx: Context, c: Check) -> None:
    # `kubectl apply -k` sends objects in the rendered order, and the operator's webhook refuses
    # a SpinApp whose executor does not exist yet.
    for overlay in OVERLAYS:
        seen = set()
        for obj in ctx.objects(overlay):
            if obj["kind"] == "SpinAppExecutor":
                seen.add(obj["metadata"]["name"])
            elif obj["kind"] == "SpinApp" and obj["spec"].get("executor") not in seen:
                c.fail(f"{overlay} SpinApp/{obj['metadata']['name']}",
                       f"rendered before its executor {obj['spec'].get('executor')} (kustomize sortOptions)")


@check
def one_autoscaler_per_workload(ctx: Context, c: Check) -> None:
    for overlay in OVERLAYS:
        targets: dict[str, list[str]] = {}
        for hpa in ctx.objects(overlay, "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            targets.setdefault(f"{ref['kind']}/{ref['name']}", []).append(name_of(hpa))
        for so in ctx.objects(overlay, "ScaledObject"):
            ref = so["spec"]["scaleTargetRef"]
            targets.setdefault(f"{ref.get('kind', 'Deployment')}/{ref['name']}", []).append(name_of(so))
        for target, scalers in targets.items():
            kind, name = target.split("/")
            owner = ctx.find(overlay, kind, name) or ctx.find(overlay, "SpinApp", name)
            if owner is None:
                c.fail(f"{overlay} {', '.join(scalers)}", f"scales {target}, which is not rendered")
            if len(scalers) > 1:
                c.fail(f"{overlay} {target}", f"scaled by several autoscalers at once: {', '.join(scalers)}")
        if ctx.find(overlay, "Deployment", "converter") and "Deployment/converter" not in targets:
            c.fail(overlay, "nothing scales the converter (ScaledObject or HorizontalPodAutoscaler)")


@check
def worker_env_matches_the_code(ctx: Context, c: Check) -> None:
    for worker, folders in WORKERS.items():
        code = ctx.rust_sources(folders)
        read = set(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', code))
        read |= set(re.findall(r'env::var(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"', code))
        if not read:
            c.fail(f"{' and '.join(folders)}", f"no `env = \"...\"` attribute found: cannot check the {worker}'s env")
            continue
        if "EnvFilter" in code:
            read.add("RUST_LOG")  # tracing-subscriber's EnvFilter reads it
        # What every process has from its image, not configuration (the converter hands PATH on
        # to ffmpeg, and nothing else of its environment).
        read -= {"PATH", "HOME"}
        for overlay in OVERLAYS:
            dep = ctx.find(overlay, "Deployment", worker)
            if dep is None:
                c.fail(overlay, f"no Deployment {worker}")
                continue
            env = container_env(dep, worker)
            where = f"{overlay} {name_of(dep)}"
            for name in sorted(set(env) - read):
                c.fail(f"{where} env {name}", f"the {worker} does not read it (not in {', '.join(folders)})")
            for name in sorted(read - set(env)):
                c.fail(where, f"does not set {name}, which the {worker} reads")
            for name, e in env.items():
                ref = e.get("valueFrom", {})
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in ref and (kind == "ConfigMap" or ctx.objects(overlay, "Secret")):
                        if env_value(ctx, overlay, e) is None:
                            c.fail(f"{where} env {name}", f"{kind} {ref[key]['name']} has no key {ref[key]['key']}")
                if (name.endswith(("PASSWORD", "USERNAME")) or name in ("AMQP_URL", "MONGODB_URL")) \
                        and "secretKeyRef" not in ref:
                    c.fail(f"{where} env {name}", "carries credentials: must come from a Secret (secretKeyRef)")


@check
def ports_and_timeouts_agree(ctx: Context, c: Check) -> None:
    for overlay in OVERLAYS:
        services = {s["metadata"]["name"]: s for s in ctx.objects(overlay, "Service")}
        for worker in WORKERS:
            dep = ctx.find(overlay, "Deployment", worker)
            if dep is None:
                continue
            where = f"{overlay} {name_of(dep)}"
            cont = next(x for x in pod_spec(dep)["containers"] if x["name"] == worker)
            env = container_env(dep, worker)
            ports = {p.get("name"): p["containerPort"] for p in cont.get("ports", [])}
            addr = env.get("METRICS_ADDR", {}).get("value")
            if not addr:
                c.fail(where, "METRICS_ADDR is not set")
                continue
            listen, port = host_port(addr)
            if listen not in ("0.0.0.0", "[::]"):
                c.fail(where, f"METRICS_ADDR {addr} does not listen on all addresses: probes and Prometheus "
                       "could not reach it")
            if ports.get("metrics") != port:
                c.fail(where, f"container port `metrics` is {ports.get('metrics')}, METRICS_ADDR listens on {port}")
            for probe in ("readinessProbe", "livenessProbe"):
                get = cont.get(probe, {}).get("httpGet", {})
                if get.get("path") != "/healthz" or get.get("port") not in ("metrics", port):
                    c.fail(where, f"{probe} is not GET /healthz on the metrics port")
            grace = pod_spec(dep).get("terminationGracePeriodSeconds", 30)
            shutdown = int(env.get("SHUTDOWN_TIMEOUT_SECS", {}).get("value", "0"))
            if grace <= shutdown:
                c.fail(where, f"terminationGracePeriodSeconds {grace} is not longer than SHUTDOWN_TIMEOUT_SECS {shutdown}")
            job = int(env.get("JOB_TIMEOUT_SECS", {}).get("value", "0"))
            if worker == "converter" and (job <= 0 or shutdown < job):
                c.fail(where, f"SHUTDOWN_TIMEOUT_SECS {shutdown} is shorter than a conversion may take "
                              f"(JOB_TIMEOUT_SECS {job}): a rollout or scale-in would requeue it, costing an attempt")
            svc = services.get(f"{worker}-metrics")
            if svc is None:
                c.fail(where, f"no Service {worker}-metrics for the metrics port")
            else:
                sp = {p.get("name"): p for p in svc["spec"]["ports"]}
                if "metrics" not in sp or sp["metrics"].get("targetPort") not in ("metrics", port):
                    c.fail(f"{overlay} {name_of(svc)}", "has no port `metrics` targeting the worker's metrics port")
        for sm in ctx.objects(overlay, "ServiceMonitor"):
            sel = sm["spec"]["selector"].get("matchLabels", {})
            matched = [s for s in services.values()
                       if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            if not matched:
                c.fail(f"{overlay} {name_of(sm)}", f"selects no Service (labels {sel})")
            for ep in sm["spec"]["endpoints"]:
                if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in matched):
                    c.fail(f"{overlay} {name_of(sm)}", f"no selected Service has a port named {ep.get('port')}")
        # The allow-list hosts: outbound MySQL is checked by name, sockets by IP (Spin never
        # matches a socket connect against a name), on the Services' ports.
        spin = ctx.spin_manifest()
        socket_vars = {v for h in spin.get("component", {}).get("gateway", {}).get("allowed_outbound_hosts", [])
                       if h.startswith("tcp://") for v in template_vars(h)}
        for key in ("db_host", "mongodb_host", "amqp_host"):
            value = configmap_value(ctx, overlay, "mp3-config", key)
            if value is None:
                c.fail(f"{overlay} ConfigMap/mp3-config", f"no key {key}")
                continue
            host, port = host_port(value)
            where = f"{overlay} ConfigMap/mp3-config {key}"
            if key in socket_vars:
                try:
                    net = ipaddress.ip_network(host, strict=True)
                except ValueError:
                    c.fail(where, f"{value}: used in tcp:// allowed_outbound_hosts, so it must be an IP "
                           "address or CIDR range (Spin checks socket connects by IP, never by name)")
                    continue
                if net.num_addresses == 1:
                    # One address: a Service's fixed cluster IP, with that port.
                    svc = next((x for x in services.values() if x["spec"].get("clusterIP") == host), None)
                    if svc is None:
                        c.fail(where, f"{value}: no Service has clusterIP {host}")
                    elif port not in [p["port"] for p in svc["spec"]["ports"]]:
                        c.fail(where, f"{value}: Service {svc['metadata']['name']} has no port {port}")
                continue
            svc_name = host.split(".")[0]
            svc = services.get(svc_name)
            if svc is None or not (host == svc_name or host.endswith(f".{NAMESPACE}.svc.cluster.local")):
                c.fail(where, f"{value} is not a Service of namespace {NAMESPACE}")
            elif port not in [p["port"] for p in svc["spec"]["ports"]]:
                c.fail(where, f"Service {svc_name} has no port {port}")
        auth_url = configmap_value(ctx, overlay, "mp3-config", "auth_url") or ""
        apps = {a["metadata"]["name"]: a for a in ctx.objects(overlay, "SpinApp")}
        auth_host = urlsplit(auth_url).hostname or ""
        auth_app = next((a for a in apps.values() if "login" in a["spec"].get("components", [])), None)
        if auth_app is None or auth_host.split(".")[0] != auth_app["metadata"]["name"]:
            c.fail(f"{overlay} ConfigMap/mp3-config auth_url",
                   f"{auth_url!r} is not the Service of the SpinApp that runs login")
        # URLs in the Secrets (rendered in minikube) point where the configuration says.
        if ctx.objects(overlay, "Secret"):
            expect = {
                ("mp3-auth", "db_url"): "db_host",
                ("mp3-gateway", "mongodb_url"): "mongodb_host",
                ("mp3-gateway", "amqp_url"): "amqp_host",
            }
            for worker in WORKERS:
                expect[(f"mp3-{worker}", "AMQP_URL")] = "amqp_host"
                expect[(f"mp3-{worker}", "MONGODB_URL")] = "mongodb_host"
            for (secret, key), host_key in expect.items():
                url = secret_value(ctx, overlay, secret, key)
                if url is None:
                    c.fail(f"{overlay} Secret/{secret}", f"no key {key}")
                    continue
                where = f"{overlay} Secret/{secret} {key}"
                host, port = urlsplit(url).hostname or "", urlsplit(url).port
                allowed_host = configmap_value(ctx, overlay, "mp3-config", host_key) or ""
                if secret == "mp3-gateway":
                    # The wasm gateway has no name lookup (Spin 3): an IP address the allow-list takes.
                    try:
                        ip = ipaddress.ip_address(host)
                    except ValueError:
                        c.fail(where, f"host {host} is a name: the gateway cannot resolve names under "
                               "Spin 3, use the Service's cluster IP")
                        continue
                    net, allowed_port = host_port(allowed_host) if allowed_host else ("0.0.0.0/0", port)
                    if ip not in ipaddress.ip_network(net) or allowed_port != port:
                        c.fail(where, f"{host}:{port} is not allowed by mp3-config {host_key} {allowed_host}")
                    continue
                svc = services.get(host.split(".")[0])
                if svc is None or not (host == svc.get("metadata", {}).get("name") or
                                       host.endswith(f".{NAMESPACE}.svc.cluster.local")):
                    c.fail(where, f"host {host} is not a Service of namespace {NAMESPACE}")
                elif port not in [p["port"] for p in svc["spec"]["ports"]]:
                    c.fail(where, f"port {port} is not a port of Service {svc['metadata']['name']}")
                if allowed_host and host_port(allowed_host)[1] != port:
                    c.fail(where, f"port {port}, but mp3-config {host_key} allows {allowed_host}")
            db = urlsplit(secret_value(ctx, overlay, "mp3-auth", "db_url") or "").path.strip("/")
            mysql = ctx.find(overlay, "StatefulSet", "mysql")
            if mysql and container_env(mysql, "mysql").get("MYSQL_DATABASE", {}).get("value") != db:
                c.fail(f"{overlay} StatefulSet/mysql", f"MYSQL_DATABASE is not db_url's database {db!r}")
            if db != "auth":
                c.fail(f"{overlay} Secret/mp3-auth db_url", f"database {db!r}, the schema is `auth`")
            keda = secret_value(ctx, overlay, "rabbitmq-keda", "host")
            rabbit = services.get("rabbitmq")
            if keda and rabbit:
                mgmt = {p.get("name"): p["port"] for p in rabbit["spec"]["ports"]}.get("management")
                if urlsplit(keda).port != mgmt:
                    c.fail(f"{overlay} Secret/rabbitmq-keda host", f"port {urlsplit(keda).port}, management is {mgmt}")


def topology_from_rust(root: Path) -> list[tuple[str, dict]]:
    """The queues of crates/model/src/topology.rs, read from its source: the work_queue! macro
    invocations, with the companions and arguments that macro gives each."""
    src = (root / "crates/model/src/topology.rs").read_text()
    macro = re.search(r"macro_rules!\s*work_queue\s*\{(.*?)\n\}", src, re.S)
    if not macro:
        raise AssertionError("topology.rs has no work_queue! macro: update this test to its new shape")
    body = re.sub(r"\s+", "", macro.group(1))
    for shape in ('name:$name,dead_letter_routing_key:Some(concat!($name,".dead")),message_ttl_ms:None',
                  'name:concat!($name,".retry"),dead_letter_routing_key:Some($name),message_ttl_ms:None',
                  'name:concat!($name,".dead"),dead_letter_routing_key:None,message_ttl_ms:None',
                  'name:concat!($name,".retry.",$secs,"s"),dead_letter_routing_key:Some($name),'
                  'message_ttl_ms:Some($secs*1000)'):
        if shape not in body:
            raise AssertionError(f"topology.rs's work_queue! macro changed shape (no {shape}): update this test")
    if '("x-dead-letter-exchange","")' not in re.sub(r"\s+", "", src):
        raise AssertionError("topology.rs no longer dead-letters through the default exchange")
    tiers = re.search(r'\(\$name:literal\)=>\{work_queue!\(\$name;([0-9,]+)\)', body)
    if not tiers:
        raise AssertionError("topology.rs's work_queue! macro lists no retry tiers: update this test")
    queues = []
    for name in re.findall(r'work_queue!\(\s*"([^"]+)"\s*\)', src):
        queues.append((name, {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{name}.dead"}))
        queues.append((f"{name}.retry", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name}))
        queues.append((f"{name}.dead", {}))
        for secs in tiers.group(1).split(","):
            queues.append((f"{name}.retry.{secs}s", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name,
                                                     "x-message-ttl": int(secs) * 1000}))
    return queues


@check
def queues_match_topology_rs(ctx: Context, c: Check) -> None:
    expected = topology_from_rust(ctx.root)
    if not expected:
        c.fail("crates/model/src/topology.rs", "declares no work_queue!")
        return
    work = {n for n, args in expected if "." not in n}
    src = (ctx.root / "crates/model/src/topology.rs").read_text()
    consts = dict(re.findall(r'pub const ([A-Z_]+_QUEUE): &str = "([^"]+)"', src))
    if consts.get("VIDEO_QUEUE") not in work:
        c.fail("crates/model/src/topology.rs", "VIDEO_QUEUE is not a work queue")
    path = "k8s/components/in-cluster-data/rabbitmq/topology.json"
    defs = json.loads((ctx.root / path).read_text())
    declared = {q["name"]: q for q in defs.get("queues", [])}
    for name, args in expected:
        q = declared.get(name)
        if q is None:
            c.fail(path, f"does not declare queue {name}")
            continue
        if q.get("arguments", {}) != args:
            c.fail(f"{path} queue {name}", f"arguments {q.get('arguments')} differ from topology.rs {args}"
                   " (RabbitMQ refuses such a redeclaration: PRECONDITION_FAILED)")
        if q.get("durable") is not True or q.get("auto_delete") is not False:
            c.fail(f"{path} queue {name}", "must be durable and not auto-deleted")
        if q.get("vhost") != "/":
            c.fail(f"{path} queue {name}", "must be on vhost /")
    for name in set(declared) - {n for n, _ in expected}:
        c.fail(f"{path} queue {name}", "is not in topology.rs")
    for overlay in OVERLAYS:
        for so in ctx.objects(overlay, "ScaledObject"):
            for trig in so["spec"]["triggers"]:
                if trig["type"] == "rabbitmq" and trig["metadata"].get("queueName") != consts.get("VIDEO_QUEUE"):
                    c.fail(f"{overlay} {name_of(so)}", f"scales on queue {trig['metadata'].get('queueName')}, "
                           f"the converter consumes {consts.get('VIDEO_QUEUE')}")
            if so["spec"]["scaleTargetRef"]["name"] != "converter":
                c.fail(f"{overlay} {name_of(so)}", "does not scale the converter")
    # The application users' permissions (written by make-secrets) cover every queue.
    users = json.loads((ctx.work / "k8s/overlays/minikube/secrets/rabbitmq-users.json").read_text())
    for perm in users["permissions"]:
        if perm["user"] in ("gateway", "converter", "notifier"):
            for name, _ in expected:
                for what in ("configure", "write", "read"):
                    if not re.search(perm[what], name):
                        c.fail(f"make-secrets rabbitmq user {perm['user']}", f"may not {what} queue {name}")
            if not re.search(perm["write"], "amq.default"):
                c.fail(f"make-secrets rabbitmq user {perm['user']}", "may not publish to the default exchange")
    # The dashboard shows queues that exist.
    dash_path = "k8s/components/monitoring/mp3-dashboard.json"
    dash = json.loads((ctx.root / dash_path).read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            for regex in re.findall(r'queue=~"([^"]*)"', target["expr"]):
                # PromQL escapes the regex's backslashes; each alternative must name queues.
                for alt in regex.replace("\\\\", "\\").split("|"):
                    if not any(re.fullmatch(alt, n) for n, _ in expected):
                        c.fail(f"{dash_path} panel {panel['title']!r}", f"queue {alt} is not in topology.rs")


def registered_metrics(ctx: Context) -> dict[str, set[str]]:
    """The metric families each worker exports: `Registry::with_prefix("<worker>")` plus every
    `registry.register("<name>", ...)` in its sources and the shared runtime's."""
    out = {}
    for worker, folders in WORKERS.items():
        code = ctx.rust_sources(folders)
        prefix = re.search(r'Registry::with_prefix\(\s*"([a-z0-9_]+)"', ctx.rust_sources(folders[:1]))
        names = re.findall(r'\.register\(\s*"([a-z0-9_]+)"', code)
        out[worker] = {f"{prefix.group(1)}_{n}" if prefix else n for n in names}
    return out


@check
def dashboard_metrics_exist(ctx: Context, c: Check) -> None:
    path = "k8s/components/monitoring/mp3-dashboard.json"
    dash = json.loads((ctx.root / path).read_text())
    families = set().union(*registered_metrics(ctx).values())
    if not families:
        c.fail("sidecars/*/src and crates/worker/src", "no registry.register(...) found: cannot check the dashboard")
        return
    # A family's samples: counters get _total, histograms _bucket, _sum and _count.
    samples = {f + suffix for f in families for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            for metric in re.findall(r"\b((?:converter|notifier)_[a-z0-9_]+)", target["expr"]):
                if metric not in samples:
                    c.fail(f"{path} panel {panel['title']!r}",
                           f"{metric} is not a metric the workers export ({', '.join(sorted(families))})")
            if "rabbitmq_" in target["expr"] and "rabbitmq_queue_messages_ready" not in target["expr"]:
                c.fail(f"{path} panel {panel['title']!r}", "uses a RabbitMQ metric other than rabbitmq_queue_messages_ready")
    rabbit_conf = (ctx.root / "k8s/components/in-cluster-data/rabbitmq/rabbitmq.conf").read_text()
    if "prometheus.return_per_object_metrics = true" not in rabbit_conf:
        c.fail("k8s/components/in-cluster-data/rabbitmq/rabbitmq.conf",
               "per-object metrics are off: rabbitmq_queue_messages_ready would have no queue label")


@check
def mysql_schema_is_crates_admin_migrations(ctx: Context, c: Check) -> None:
    mig = ctx.root / "crates/admin/migrations"
    files = sorted(p.name for p in mig.glob("*.sql"))
    kust = yaml.safe_load((mig / "kustomization.yaml").read_text())
    listed = [f for g in kust.get("configMapGenerator", []) if g["name"] == "mysql-migrations" for f in g.get("files", [])]
    for f in files:
        if f not in listed:
            c.fail("crates/admin/migrations/kustomization.yaml", f"does not list {f}: MySQL in Kubernetes would miss it")
    for f in listed:
        if f not in files:
            c.fail("crates/admin/migrations/kustomization.yaml", f"lists {f}, which does not exist")
    for f in files:
        if not re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", f):
            c.fail(f"crates/admin/migrations/{f}", "name is not NNNN_name.sql (record-migrations.sh reads the number)")
    migrate_rs = (ctx.root / "crates/admin/src/migrate.rs").read_text()
    embedded = set(re.findall(r'include_str!\("\.\./migrations/([^"]+)"\)', migrate_rs))
    if embedded != set(files):
        c.fail("crates/admin/src/migrate.rs", f"embeds {sorted(embedded)}, the folder has {files}")
    ddl = re.search(r'"(CREATE TABLE IF NOT EXISTS schema_migrations \(.*?\) ENGINE=InnoDB)"', migrate_rs, re.S)
    script = (ctx.root / "k8s/components/in-cluster-data/mysql/record-migrations.sh").read_text()
    norm = lambda s: re.sub(r"\s+", " ", s).strip()
    if not ddl:
        c.fail("crates/admin/src/migrate.rs", "no CREATE TABLE schema_migrations found: update this test")
    elif norm(ddl.group(1)) not in norm(script):
        c.fail("k8s/components/in-cluster-data/mysql/record-migrations.sh",
               "creates schema_migrations differently from mp3-admin migrate")
    for overlay in OVERLAYS:
        sts = ctx.find(overlay, "StatefulSet", "mysql")
        if sts is None:
            continue
        init = next((v for v in pod_spec(sts)["volumes"] if v["name"] == "init"), {})
        sources = [s.get("configMap", {}).get("name", "") for s in init.get("projected", {}).get("sources", [])]
        if not any(s.startswith("mysql-migrations") for s in sources):
            c.fail(f"{overlay} {name_of(sts)}", "does not mount ConfigMap mysql-migrations in /docker-entrypoint-initdb.d")


@check
def each_overlay_sets_trusted_proxies(ctx: Context, c: Check) -> None:
    """login believes the X-Forwarded-For entries of `trusted_proxies`, the cluster's pod
    network: it differs from cluster to cluster, so no default in the base can be right (wrong,
    login counts every attempt against the gateway's own address, and one client locks everyone
    out), and each overlay must say it."""
    base = (ctx.root / "k8s/base/app-config.env").read_text()
    if re.search(r"^trusted_proxies=", base, re.M):
        c.fail("k8s/base/app-config.env", "sets trusted_proxies: each overlay sets its cluster's pod network")
    for overlay in OVERLAYS:
        value = configmap_value(ctx, overlay, "mp3-config", "trusted_proxies")
        if not value:
            c.fail(overlay, "does not set trusted_proxies (ConfigMap mp3-config): its cluster's pod network")
            continue
        for cidr in value.split(","):
            try:
                net = ipaddress.ip_network(cidr.strip())
            except ValueError:
                c.fail(overlay, f"trusted_proxies has {cidr!r}, not a CIDR range")
                continue
            # RFC 1918 and the like, or the shared range some clusters give pods (100.64/10).
            shared = net.version == 4 and net.subnet_of(ipaddress.ip_network("100.64.0.0/10"))
            if net.prefixlen < 8 or not (net.is_private or shared):
                c.fail(overlay, f"trusted_proxies {cidr} is not a private pod network: anyone could choose "
                                "the address login counts")


def quantity_bytes(value: str) -> int:
    """A Kubernetes quantity in bytes (binary or decimal suffixes)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", value.strip())
    if not m:
        raise ValueError(value)
    units = {None: 1, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4,
             "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12}
    return int(m.group(1)) * units[m.group(2)]


@check
def converter_tmp_holds_its_largest_videos(ctx: Context, c: Check) -> None:
    """ffmpeg caches a video that needs seeking in /tmp, and writes a VBR or trimmed MP3 there
    first (at most MAX_FILE_OUTPUT, sidecars/converter/src/convert.rs): a pod needs room for
    CONCURRENCY of both at once, or the kubelet evicts it mid-conversion, and again on
    redelivery."""
    spin = ctx.spin_manifest()
    for overlay in OVERLAYS:
        dep = ctx.find(overlay, "Deployment", "converter")
        if dep is None:
            continue
        where = f"{overlay} {name_of(dep)}"
        largest = configmap_value(ctx, overlay, "mp3-config", "max_resumable_upload_bytes") or \
            str(spin.get("variables", {}).get("max_resumable_upload_bytes", {}).get("default", ""))
        concurrency = env_value(ctx, overlay, container_env(dep, "converter").get("CONCURRENCY", {}))
        tmp = next((v for v in pod_spec(dep).get("volumes", []) if v["name"] == "tmp"), {})
        # A volume of its own: gigabytes of node ephemeral storage beyond the pod's request would
        # make converters the kubelet's first evictions under disk pressure.
        if "ephemeral" not in tmp:
            c.fail(where, "/tmp is not a generic ephemeral volume (a claim of the pod's own)")
            continue
        claim = tmp["ephemeral"].get("volumeClaimTemplate", {}).get("spec", {})
        size = claim.get("resources", {}).get("requests", {}).get("storage")
        if not (largest or "").isdigit() or not (concurrency or "").isdigit() or size is None:
            c.fail(where, "max_resumable_upload_bytes, CONCURRENCY or the /tmp claim's size is missing")
            continue
        if quantity_bytes(size) < int(concurrency) * (int(largest) + MAX_FILE_OUTPUT):
            c.fail(where, f"/tmp ({size}) cannot hold {concurrency} videos of max_resumable_upload_bytes "
                          f"{largest} and their MP3s")


# The largest MP3 the converter writes to /tmp (convert.rs MAX_FILE_OUTPUT).
MAX_FILE_OUTPUT = 2 * 1024 ** 3


def size_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", value.strip().lower())
    if not m:
        raise ValueError(value)
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2)]


@check
def ingress_streams_uploads_to_the_gateway(ctx: Context, c: Check) -> None:
    spin = ctx.spin_manifest()
    for overlay in OVERLAYS:
        ingresses = ctx.objects(overlay, "Ingress")
        if len(ingresses) != 1:
            c.fail(overlay, f"{len(ingresses)} Ingresses, expected one")
            continue
        ing = ingresses[0]
        where = f"{overlay} {name_of(ing)}"
        ann = ing["metadata"].get("annotations", {})
        limit = configmap_value(ctx, overlay, "mp3-config", "max_upload_bytes") or \
            str(spin.get("variables", {}).get("max_upload_bytes", {}).get("default", ""))
        if not limit.isdigit():
            c.fail(where, "max_upload_bytes is set neither in mp3-config nor as a spin.toml default")
        else:
            body = ann.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")
            size = size_bytes(body)
            if not int(limit) <= size <= int(limit) + 16 * 1024 ** 2:
                c.fail(where, f"proxy-body-size {body} ({size} bytes) does not match max_upload_bytes {limit} "
                       "(at least it, at most 16 MiB more for the multipart framing)")
        if ann.get("nginx.ingress.kubernetes.io/proxy-request-buffering") != "off":
            c.fail(where, "proxy-request-buffering is not off: nginx would spool uploads to disk")
        for t in ("proxy-read-timeout", "proxy-send-timeout"):
            if int(ann.get(f"nginx.ingress.kubernetes.io/{t}", "60")) < 600:
                c.fail(where, f"{t} under 600 s: large uploads would be cut")
        if ing["spec"].get("ingressClassName") != "nginx":
            c.fail(where, "ingressClassName is not nginx")
        hosts = [r["host"] for r in ing["spec"]["rules"]]
        tls_hosts = [h for t in ing["spec"].get("tls", []) for h in t.get("hosts", [])]
        if not ing["spec"].get("tls") or set(hosts) - set(tls_hosts):
            c.fail(where, "not every host is served over TLS")
        for t in ing["spec"].get("tls", []):
            if ctx.objects(overlay, "Secret") and not ctx.find(overlay, "Secret", t["secretName"]):
                c.fail(where, f"TLS Secret {t['secretName']} is not rendered")
        apps = {a["metadata"]["name"] for a in ctx.objects(overlay, "SpinApp")
                if "gateway" in a["spec"].get("components", [])}
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                if svc["name"] not in apps or svc["port"].get("number") != 80:
                    c.fail(where, f"routes {p['path']} to {svc['name']}:{svc['port']}, not to the gateway SpinApp's Service port 80")
        notifier = ctx.find(overlay, "Deployment", "notifier")
        if notifier:
            base_url = container_env(notifier, "notifier").get("DOWNLOAD_BASE_URL", {}).get("value", "")
            if urlsplit(base_url).hostname not in hosts or urlsplit(base_url).scheme != "https":
                c.fail(f"{overlay} Deployment/notifier DOWNLOAD_BASE_URL",
                       f"{base_url!r} is not https:// on the Ingress host {hosts}")


# ------------------------------------------------------------------ network policies


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        val = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and val not in e["values"]:
            return False
        if op == "NotIn" and val in e.get("values", []):
            return False
        if op == "Exists" and e["key"] not in labels:
            return False
        if op == "DoesNotExist" and e["key"] in labels:
            return False
    return True


class Endpoint:
    def __init__(self, name, namespace, labels=None, ports=None, ip=None):
        self.name, self.namespace, self.labels = name, namespace, labels or {}
        self.ports, self.ip = ports or {}, ip


def peer_matches(peer: dict, ep: Endpoint, policy_ns: str, ns_labels: dict) -> bool:
    if "ipBlock" in peer:
        if ep.ip is None:
            return False
        net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        ip = ipaddress.ip_address(ep.ip)
        return ip in net and not any(ip in ipaddress.ip_network(x) for x in peer["ipBlock"].get("except", []))
    if ep.ip is not None:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ns_labels.get(ep.namespace, {})):
            return False
    elif ep.namespace != policy_ns:
        return False
    if "podSelector" in peer:
        return selector_matches(peer["podSelector"], ep.labels)
    return True


def port_matches(rule_ports, port: int, dst: Endpoint) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        want = p.get("port")
        if want is None or want == port or (isinstance(want, str) and dst.ports.get(want) == port):
            if p.get("protocol", "TCP") == "TCP":
                return True
    return False


def allowed(policies, src: Endpoint, dst: Endpoint, port: int, ns_labels: dict) -> bool:
    def direction_ok(kind, subject, other, peer_key):
        selecting = [p for p in policies if p["metadata"]["namespace"] == subject.namespace
                     and kind in p["spec"].get("policyTypes", ["Ingress"])
                     and selector_matches(p["spec"]["podSelector"], subject.labels)]
        if not selecting:
            return True
        for p in selecting:
            for rule in p["spec"].get(kind.lower(), []) or []:
                peers = rule.get(peer_key)
                if (not peers or any(peer_matches(x, other, p["metadata"]["namespace"], ns_labels) for x in peers)) \
                        and port_matches(rule.get("ports"), port, dst):
                    return True
        return False

    ok = True
    if src.ip is None and src.namespace == NAMESPACE:
        ok = ok and direction_ok("Egress", src, dst, "to")
    if dst.ip is None and dst.namespace == NAMESPACE:
        ok = ok and direction_ok("Ingress", dst, src, "from")
    return ok


def endpoints(ctx: Context, overlay: str) -> dict[str, Endpoint]:
    eps = {}
    for obj in ctx.objects(overlay):
        if obj["kind"] in WORKLOAD_KINDS:
            spec = pod_spec(obj)
            ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if "name" in p}
            eps[obj["metadata"]["name"]] = Endpoint(obj["metadata"]["name"], NAMESPACE,
                                                    obj["spec"]["template"]["metadata"]["labels"], ports)
        elif obj["kind"] == "SpinApp":
            labels = dict(obj["spec"].get("podLabels", {}))
            labels["core.spinkube.dev/app-name"] = obj["metadata"]["name"]
            eps[obj["metadata"]["name"]] = Endpoint(obj["metadata"]["name"], NAMESPACE, labels, {"http-app": 80})
        elif obj["kind"] == "Ingress" and any(k.startswith("cert-manager.io/") and k.endswith("issuer")
                                              for k in obj["metadata"].get("annotations", {})):
            # The pod cert-manager starts for an HTTP-01 challenge, with the label it gives it.
            eps["acme-solver"] = Endpoint("acme-solver", NAMESPACE,
                                          {"acme.cert-manager.io/http01-solver": "true"}, {"http": 8089})
    eps.update(outside_endpoints())
    return eps


# The namespaces the flows cross, with the label Kubernetes gives every namespace.
NAMESPACE_LABELS = {n: {"kubernetes.io/metadata.name": n} for n in
                    ("mp3", "ingress-nginx", "keda", "monitoring", "kube-system")}


def outside_endpoints() -> dict[str, Endpoint]:
    """The peers outside namespace mp3, with the labels their usual installations give them."""
    return {
        "ingress-nginx": Endpoint("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
        "keda": Endpoint("keda-operator", "keda", {"app": "keda-operator"}),
        "prometheus": Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        "kube-dns": Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"}),
        "smtp-relay": Endpoint("smtp relay", "", ip="198.51.100.25"),
        "internet": Endpoint("internet", "", ip="203.0.113.80"),
        "cloud-metadata": Endpoint("cloud metadata", "", ip="169.254.169.254"),
        "managed-data": Endpoint("managed data", "", ip="10.100.3.4"),
    }


def designed_flows(eps: dict[str, Endpoint]) -> tuple[list, list]:
    """The flows the design needs and those it forbids, as (source, destination, port) over the
    names of `endpoints` (check_cluster.py evaluates them against the live pods too)."""
    in_cluster = "mysql" in eps and eps["mysql"].labels
    data = {"mysql": "mysql", "mongodb": "mongodb", "rabbitmq": "rabbitmq"} if in_cluster else \
        {"mysql": "managed-data", "mongodb": "managed-data", "rabbitmq": "managed-data"}
    must = [
        ("ingress-nginx", "mp3-gateway", 80),
        ("mp3-gateway", "mp3-auth", 80),
        ("mp3-gateway", data["mongodb"], 27017),
        ("mp3-gateway", data["rabbitmq"], 5672),
        ("mp3-auth", data["mysql"], 3306),
        ("converter", data["mongodb"], 27017),
        ("converter", data["rabbitmq"], 5672),
        ("notifier", data["mongodb"], 27017),
        ("notifier", data["rabbitmq"], 5672),
        ("notifier", "smtp-relay", 587),
        ("notifier", "smtp-relay", 465),
        ("notifier", "smtp-relay", 25),
        # Webhooks, to whatever public address and port users name.
        ("notifier", "internet", 443),
        ("notifier", "internet", 8080),
        ("prometheus", "converter", eps["converter"].ports.get("metrics", -1)),
        ("prometheus", "notifier", eps["notifier"].ports.get("metrics", -1)),
    ]
    for name in ("mp3-gateway", "mp3-auth", "converter", "notifier"):
        must.append((name, "kube-dns", 53))
    must_not = [
        ("ingress-nginx", "mp3-auth", 80),
        ("ingress-nginx", "converter", eps["converter"].ports.get("metrics", -1)),
        ("mp3-gateway", data["mysql"], 3306),
        ("mp3-auth", data["mongodb"], 27017),
        ("mp3-auth", data["rabbitmq"], 5672),
        ("converter", data["mysql"], 3306),
        ("notifier", data["mysql"], 3306),
        ("converter", "smtp-relay", 587),
        ("mp3-gateway", "internet", 443),
        ("converter", "internet", 443),
        ("notifier", "cloud-metadata", 80),
        ("notifier", "managed-data", 3306),
        ("mp3-auth", "internet", 443),
        ("converter", "mp3-auth", 80),
        ("mp3-gateway", "converter", eps["converter"].ports.get("metrics", -1)),
    ]
    if "acme-solver" in eps:
        # Let's Encrypt reaches the challenge through the ingress controller; nothing else.
        must.append(("ingress-nginx", "acme-solver", 8089))
        must_not += [("ingress-nginx", "acme-solver", 80), ("acme-solver", "mp3-auth", 80),
                     ("mp3-gateway", "acme-solver", 8089)]
    if in_cluster:
        must += [("keda", "rabbitmq", 15672), ("notifier", "mailpit", 1025),
                 ("prometheus", "rabbitmq", 15692)]
        must_not += [("keda", "mysql", 3306), ("ingress-nginx", "mysql", 3306),
                     ("ingress-nginx", "rabbitmq", 15672), ("converter", "mailpit", 1025)]
    return must, must_not


def flow_problems(policies: list[dict], eps: dict[str, Endpoint], ns_labels: dict) -> list[str]:
    must, must_not = designed_flows(eps)
    problems = []
    for src, dst, port in must:
        if src not in eps or dst not in eps:
            problems.append(f"no workload {src if src not in eps else dst} to check {src} -> {dst}")
        elif not allowed(policies, eps[src], eps[dst], port, ns_labels):
            problems.append(f"NetworkPolicies block {src} -> {dst}:{port}, which the design needs")
    for src, dst, port in must_not:
        if src in eps and dst in eps and allowed(policies, eps[src], eps[dst], port, ns_labels):
            problems.append(f"NetworkPolicies allow {src} -> {dst}:{port}, which the design forbids")
    return problems


@check
def network_policies_allow_only_the_designed_flows(ctx: Context, c: Check) -> None:
    ns_labels = NAMESPACE_LABELS
    for overlay in OVERLAYS:
        policies = ctx.objects(overlay, "NetworkPolicy")
        deny = [p for p in policies if p["spec"]["podSelector"] == {} and
                set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} and
                not p["spec"].get("ingress") and not p["spec"].get("egress")]
        if not deny:
            c.fail(overlay, "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
        eps = endpoints(ctx, overlay)
        if not all(w in eps for w in ("mp3-gateway", "mp3-auth", "converter", "notifier")):
            c.fail(overlay, "lacks the gateway, auth or worker pods: nothing to check")
            continue
        for problem in flow_problems(policies, eps, ns_labels):
            c.fail(overlay, problem)


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("-k", dest="only", default="")
    args = parser.parse_args()
    root = args.root.resolve()
    with tempfile.TemporaryDirectory(prefix="k8s-checks-") as tmp:
        ctx = Context(root, Path(tmp))
        passed = failed = 0
        for fn in CHECKS:
            if args.only and args.only not in fn.__name__:
                continue
            c = Check()
            try:
                fn(ctx, c)
            except Exception as e:  # a check that crashes fails, with its reason
                c.fail(fn.__name__, f"check crashed: {e!r}\n{traceback.format_exc()}")
            if c.problems:
                failed += 1
                print(f"FAIL {fn.__name__}")
                for p in c.problems:
                    print(f"     {p}")
            else:
                passed += 1
                print(f"ok   {fn.__name__}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
