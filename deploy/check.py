"""Checks of the deployment files, run by deploy/check.sh with the tools of
deploy/requirements.txt (kubectl, kubernetes-validate, PyYAML, jsonschema)
and promtool on PATH.

  python deploy/check.py kubernetes   render base and overlays, validate, assert
  python deploy/check.py metrics      alert, dashboard and adapter series exist
  python deploy/check.py alerts       alert tests cover and bite every alert
  python deploy/check.py compose      compose.yaml and haproxy.cfg agree

Each prints what it checked and exits 1 on the first group with a failure
(every failure of the group is listed).
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import yaml
from kubernetes_validate import utils as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
PROM = os.path.join(ROOT, "deploy", "prometheus")
METRICS_DIR = os.path.join(ROOT, "src", "metrics")

# Kubernetes versions the manifests are validated against (strict schemas of
# kubernetes-validate): the oldest supported and the newest the pinned
# kubernetes-validate knows.
KUBE_VERSIONS = ["1.32.0", "1.37.0"]
RENDERS = ["base", "overlays/cpu", "overlays/gpu"]
# Custom resources: validated against the schemas vendored in
# deploy/kubernetes/schemas/ (kubernetes-validate has only built-in kinds).
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring-v1.json",
}
SECRET_NAME = "gantry-secrets"
SECRET_KEYS = {"admin-token", "redis-url", "database-url"}
UID = 10001

failures = []


def fail(message):
    failures.append(message)
    print(f"  FAIL {message}")


def ok(message):
    print(f"  ok   {message}")


def check(condition, message):
    if condition:
        ok(message)
    else:
        fail(message)
    return condition


def finish(group):
    if failures:
        print(f"{group}: {len(failures)} failure(s)")
        sys.exit(1)
    print(f"{group}: all checks passed")


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- kubernetes -----------------------------------------------------------------


def render(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", os.path.join(KUBE, overlay)],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        fail(f"kubectl kustomize {overlay}: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(doc, where):
    name = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        with open(os.path.join(KUBE, "schemas", CRD_SCHEMAS[key])) as f:
            schema = json.load(f)
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
        )
        for e in errors:
            fail(f"{name} against schemas/{CRD_SCHEMAS[key]}: {'.'.join(map(str, e.path))}: {e.message}")
        if not errors:
            ok(f"{name} valid (vendored schema {CRD_SCHEMAS[key]})")
        return
    for version in KUBE_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            fail(f"{name} against Kubernetes {version} (strict): {'.'.join(map(str, e.path))}: {e.message}")
            return
        except kv.SchemaNotFoundError as e:
            fail(f"{name}: {e.message}; add a schema to deploy/kubernetes/schemas/ and CRD_SCHEMAS")
            return
    ok(f"{name} valid, strict, Kubernetes {' and '.join(KUBE_VERSIONS)}")


def by_kind(docs):
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    return kinds


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def probe_path(probe):
    return (probe or {}).get("httpGet", {}).get("path")


def assert_render(overlay, docs):
    kinds = by_kind(docs)
    complete = True
    for kind in ["Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "PodMonitor"]:
        complete &= check(len(kinds.get(kind, [])) == 1, f"{overlay}: one {kind}")
    check("Secret" not in kinds, f"{overlay}: no Secret in the build (secrets are created apart)")
    if not complete:
        return
    dep = kinds["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    check(matches(dep["spec"]["selector"]["matchLabels"], pod_labels),
          f"{overlay}: Deployment selector matches its pod labels")
    check("replicas" not in dep["spec"], f"{overlay}: Deployment leaves replicas to the HPA")
    containers = pod["containers"]
    check(len(containers) == 1, f"{overlay}: one container")
    c = containers[0]

    # Probes.
    ports = {p.get("name"): p for p in c.get("ports", [])}
    check(ports.get("http", {}).get("containerPort") == 8080, f"{overlay}: container port http is 8080")
    check(probe_path(c.get("readinessProbe")) == "/v2/health/ready", f"{overlay}: readiness probe on /v2/health/ready")
    check(probe_path(c.get("livenessProbe")) == "/v2/health/live", f"{overlay}: liveness probe on /v2/health/live")
    sp = c.get("startupProbe") or {}
    check(probe_path(sp) in ("/v2/health/ready", "/v2/health/live"), f"{overlay}: startup probe on a health route")
    startup_s = sp.get("failureThreshold", 3) * sp.get("periodSeconds", 10)
    check(startup_s >= 300, f"{overlay}: startup probe allows {startup_s} s for model loading (>= 300)")
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = (c.get(kind) or {}).get("httpGet", {}).get("port")
        check(port in ("http", 8080), f"{overlay}: {kind} on port http")

    # Security.
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is not False, f"{overlay}: runAsNonRoot")
    check(psc.get("runAsUser") == UID and csc.get("runAsUser", UID) == UID, f"{overlay}: runAsUser {UID}")
    check(psc.get("runAsGroup") == UID, f"{overlay}: runAsGroup {UID}")
    check(csc.get("readOnlyRootFilesystem") is True, f"{overlay}: readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{overlay}: allowPrivilegeEscalation false")
    check(csc.get("privileged") is not True, f"{overlay}: not privileged")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc.get("capabilities", {}).get("add"),
          f"{overlay}: capabilities drop ALL, add none")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
    check(seccomp.get("type") == "RuntimeDefault", f"{overlay}: seccomp RuntimeDefault")
    check(pod.get("automountServiceAccountToken") is False, f"{overlay}: no service account token")

    # Volumes: /tmp from an emptyDir, the config from the ConfigMap.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    tmp = mounts.get("/tmp")
    check(tmp is not None and "emptyDir" in volumes.get(tmp["name"], {}), f"{overlay}: /tmp is an emptyDir")
    cm = kinds["ConfigMap"][0]
    conf = mounts.get("/etc/gantry")
    check(conf is not None and volumes.get(conf["name"], {}).get("configMap", {}).get("name") == cm["metadata"]["name"],
          f"{overlay}: /etc/gantry is the ConfigMap {cm['metadata']['name']}")
    argv = (c.get("command") or []) + (c.get("args") or [])
    check("/etc/gantry/gantry.toml" in argv and argv[argv.index("/etc/gantry/gantry.toml") - 1] == "--config",
          f"{overlay}: gantry runs with --config /etc/gantry/gantry.toml")

    # gantry.toml.
    try:
        toml = tomllib.loads(cm["data"]["gantry.toml"])
    except (KeyError, tomllib.TOMLDecodeError) as e:
        fail(f"{overlay}: ConfigMap gantry.toml does not parse: {e}")
        return
    server = toml.get("server", {})
    check(server.get("bind") == "0.0.0.0:8080", f"{overlay}: server.bind = 0.0.0.0:8080")
    check(toml.get("models", {}).get("dir") == "/models", f"{overlay}: models.dir = /models")
    check(server.get("drain_delay_s") == 5, f"{overlay}: server.drain_delay_s = 5")
    check(toml.get("log", {}).get("format") == "json", f"{overlay}: log.format = json")
    drain = server.get("drain_delay_s", 0) + server.get("shutdown_timeout_s", 30)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace >= drain + 10,
          f"{overlay}: terminationGracePeriodSeconds {grace} >= drain_delay_s + shutdown_timeout_s ({drain}) + 10")
    check(not c.get("lifecycle", {}).get("preStop"), f"{overlay}: no preStop (the server drains itself)")

    # Secrets by reference only.
    refs = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[e["name"]] = ref
        elif e.get("value") and any(s in e["name"] for s in ("TOKEN", "URL", "PASSWORD")):
            fail(f"{overlay}: env {e['name']} has a literal value; use the Secret")
    check({r["name"] for r in refs.values()} == {SECRET_NAME}, f"{overlay}: env reads Secret {SECRET_NAME}")
    check({r["key"] for r in refs.values()} == SECRET_KEYS, f"{overlay}: env reads keys {sorted(SECRET_KEYS)}")
    check(refs.get("GANTRY__SERVER__ADMIN_TOKEN", {}).get("key") == "admin-token", f"{overlay}: admin token from admin-token")
    check(refs.get("REDIS_URL", {}).get("key") == "redis-url", f"{overlay}: REDIS_URL from redis-url")
    check(refs.get("DATABASE_URL", {}).get("key") == "database-url", f"{overlay}: DATABASE_URL from database-url")

    # Resources.
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        check({"cpu", "memory"} <= set(res.get(part, {})), f"{overlay}: resources.{part} set cpu and memory")
    check(res.get("limits", {}).get("memory") == res.get("requests", {}).get("memory"),
          f"{overlay}: memory request = limit (the budget is 75% of the limit)")
    gpu = overlay.endswith("gpu")
    image = c["image"]
    if gpu:
        check(image == "gantry:gpu", f"{overlay}: image gantry:gpu")
        check(str(res.get("limits", {}).get("nvidia.com/gpu")) == "1", f"{overlay}: limits nvidia.com/gpu: 1")
        check(str(res.get("requests", {}).get("nvidia.com/gpu")) == "1", f"{overlay}: requests nvidia.com/gpu: 1")
        check(any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])),
              f"{overlay}: tolerates nvidia.com/gpu")
    else:
        check(image == "gantry:latest", f"{overlay}: image gantry:latest")
        check("nvidia.com/gpu" not in json.dumps(res), f"{overlay}: no GPU requested")

    # Service, PDB, HPA, PodMonitor.
    svc = kinds["Service"][0]
    check(matches(svc["spec"]["selector"], pod_labels), f"{overlay}: Service selects the pods")
    sports = {p.get("name"): p for p in svc["spec"]["ports"]}
    check(sports.get("http", {}).get("targetPort") in ("http", 8080), f"{overlay}: Service port named http to http")
    pdb = kinds["PodDisruptionBudget"][0]
    check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), f"{overlay}: PDB selects the pods")
    hpa = kinds["HorizontalPodAutoscaler"][0]
    check(hpa["apiVersion"] == "autoscaling/v2", f"{overlay}: HPA autoscaling/v2")
    target = hpa["spec"]["scaleTargetRef"]
    check(target["kind"] == "Deployment" and target["name"] == dep["metadata"]["name"], f"{overlay}: HPA scales the Deployment")
    hpa_min = hpa["spec"].get("minReplicas", 1)
    check(hpa_min >= 2, f"{overlay}: HPA keeps at least 2 pods (the PDB lets one go)")
    check(hpa["spec"]["maxReplicas"] >= hpa_min, f"{overlay}: HPA maxReplicas >= minReplicas")
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    check(pods_metrics == [adapter_metric_name()],
          f"{overlay}: HPA Pods metric {pods_metrics} is the adapter's {adapter_metric_name()}")
    pm = kinds["PodMonitor"][0]
    check(matches(pm["spec"]["selector"].get("matchLabels"), pod_labels), f"{overlay}: PodMonitor selects the pods")
    endpoints = pm["spec"]["podMetricsEndpoints"]
    check([(e.get("port"), e.get("path", "/metrics")) for e in endpoints] == [("http", "/metrics")],
          f"{overlay}: PodMonitor scrapes http /metrics")


def adapter_rules():
    with open(os.path.join(PROM, "adapter-rules.yaml")) as f:
        return yaml.safe_load(f)["rules"]


def adapter_metric_name():
    rules = [r for r in adapter_rules() if "gantry_queue_depth" in r["seriesQuery"]]
    if len(rules) != 1:
        return None
    return rules[0].get("name", {}).get("as") or "gantry_queue_depth"


def cmd_kubernetes():
    print("kubernetes: render, validate, assert")
    rendered = {}
    for overlay in RENDERS:
        docs = render(overlay)
        rendered[overlay] = docs
        ok(f"kubectl kustomize {overlay}: {len(docs)} objects")
        for doc in docs:
            validate(doc, overlay)
    example = os.path.join(KUBE, "secret.example.yaml")
    for doc in load_yaml_docs(example):
        validate(doc, "secret.example.yaml")
        check(doc["metadata"]["name"] == SECRET_NAME and set(doc.get("stringData", {})) == SECRET_KEYS,
              f"secret.example.yaml: Secret {SECRET_NAME} with keys {sorted(SECRET_KEYS)}")
    for kustomization in ("base", "overlays/cpu", "overlays/gpu"):
        with open(os.path.join(KUBE, kustomization, "kustomization.yaml")) as f:
            k = yaml.safe_load(f)
        check(not any("secret" in r for r in k.get("resources", [])) and "secretGenerator" not in k,
              f"{kustomization}: no Secret in the kustomization")
    for overlay, docs in rendered.items():
        assert_render(overlay, docs)
    rules = adapter_rules()
    check(len(rules) == 1, "adapter-rules.yaml: one rule")
    rule = rules[0]
    check(set(rule["resources"]["overrides"]) == {"namespace", "pod"}, "adapter rule maps namespace and pod")
    check(re.fullmatch(r"sum by \(<<\.GroupBy>>\) \(<<\.Series>>\{<<\.LabelMatchers>>\}\)", rule["metricsQuery"]) is not None,
          "adapter rule sums the series by pod (over models)")
    finish("kubernetes")


# --- metric names -------------------------------------------------------------------


def exposed_series():
    """Every series name /metrics can expose, read from the registrations in
    the modules of src/metrics/: counters get _total, histograms _bucket,
    _sum and _count, a unit its suffix."""
    src = ""
    for name in sorted(os.listdir(METRICS_DIR)):
        if name.endswith(".rs"):
            with open(os.path.join(METRICS_DIR, name)) as f:
                src += f.read() + "\n"
    calls = re.finditer(
        r'register(_with_unit)?\(\s*"([a-z0-9_]+)",\s*"(?:[^"\\]|\\.)*",\s*(?:Unit::(\w+),\s*)?(.*?)\)\s*;',
        src, re.S)
    names = {}
    for call in calls:
        base, unit, value = call.group(2), call.group(3), call.group(4).strip()
        name = "gantry_" + base + {None: "", "Seconds": "_seconds", "Bytes": "_bytes"}[unit]
        if value.startswith("counter("):
            kind = "counter"
        elif value.startswith("gauge("):
            kind = "gauge"
        else:
            ident = re.match(r"(\w+)", value).group(1)
            decl = re.search(rf"let (?:mut )?{ident}\s*=\s*(.*?);", src, re.S)
            text = decl.group(1) if decl else ""
            if not decl:
                # A parameter `ident: Type`, the type perhaps an alias.
                param = re.search(rf"\b{ident}:\s*(\w+)", src)
                if param:
                    alias = re.search(rf"type {param.group(1)}\s*=\s*(.*?);", src, re.S)
                    text = alias.group(1) if alias else param.group(1)
            kind = ("histogram" if "istogram" in text else "counter" if "Counter" in text
                    else "gauge" if "Gauge" in text else None)
        if kind is None:
            raise SystemExit(f"cannot tell the type of {name} in src/metrics/")
        names[name] = kind
    series = {}
    for name, kind in names.items():
        for suffix in {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}[kind]:
            series[name + suffix] = kind
    return series


SERIES_RE = re.compile(r"\bgantry_[a-z0-9_]+\b")


def check_names(where, expr, series):
    used = set(SERIES_RE.findall(expr))
    unknown = sorted(used - set(series))
    if unknown:
        fail(f"{where}: unknown series {unknown}")
    return used


def cmd_metrics():
    series = exposed_series()
    print(f"metrics: {len(series)} series exposed per src/metrics/")
    # Alert rules.
    with open(os.path.join(PROM, "alerts.yaml")) as f:
        groups = yaml.safe_load(f)["groups"]
    for g in groups:
        for rule in g["rules"]:
            used = check_names(f"alerts.yaml {rule['alert']}", rule["expr"], series)
            check(used, f"alerts.yaml {rule['alert']}: reads {sorted(used)}")
    # Alert tests' input series.
    with open(os.path.join(PROM, "alerts_test.yaml")) as f:
        tests = yaml.safe_load(f)["tests"]
    for t in tests:
        for s in t.get("input_series", []):
            name = s["series"].split("{")[0]
            if name not in series:
                fail(f"alerts_test.yaml '{t.get('name')}': input series {name} is not exposed")
            elif name.endswith("_bucket") and 'le="' not in s["series"]:
                fail(f"alerts_test.yaml '{t.get('name')}': {name} without le")
    ok("alerts_test.yaml: input series are exposed series")
    # Adapter.
    for rule in adapter_rules():
        used = check_names("adapter-rules.yaml", rule["seriesQuery"], series)
        check(used == {"gantry_queue_depth"} and series["gantry_queue_depth"] == "gauge",
              "adapter-rules.yaml reads the gauge gantry_queue_depth")
    # Dashboard.
    with open(os.path.join(ROOT, "deploy", "grafana", "gantry-dashboard.json")) as f:
        dash = json.load(f)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    check(variables.get("DS_PROMETHEUS", {}).get("type") == "datasource"
          and variables["DS_PROMETHEUS"].get("query") == "prometheus",
          "dashboard: data source variable DS_PROMETHEUS (type prometheus)")
    for v in variables.values():
        if v["type"] == "query":
            check_names(f"dashboard variable {v['name']}", v["definition"], series)
    ids = set()
    panels = 0
    for p in dash["panels"]:
        if p["id"] in ids:
            fail(f"dashboard: panel id {p['id']} twice")
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        panels += 1
        title = p.get("title", "?")
        if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            fail(f"dashboard '{title}': datasource is not ${{DS_PROMETHEUS}}")
        if not p.get("targets"):
            fail(f"dashboard '{title}': no query")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
                fail(f"dashboard '{title}' {t.get('refId')}: datasource is not ${{DS_PROMETHEUS}}")
            used = check_names(f"dashboard '{title}' {t.get('refId')}", t.get("expr", ""), series)
            if not used:
                fail(f"dashboard '{title}' {t.get('refId')}: the query reads no gantry_ series")
    ok(f"dashboard: {panels} panels, every query reads exposed series only")
    finish("metrics")


# --- alert tests ----------------------------------------------------------------


def promtool_test(rules, tests_path, workdir):
    """promtool test rules' exit code on `rules`, which must be valid rules
    (so that a failure means a test failed, not a rule that does not parse)."""
    path = os.path.join(workdir, "alerts.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(rules, f, sort_keys=False)
    checked = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
    if checked.returncode != 0:
        raise SystemExit(f"mutated rules do not parse:\n{checked.stdout}{checked.stderr}")
    shutil.copy(tests_path, os.path.join(workdir, "alerts_test.yaml"))
    out = subprocess.run(["promtool", "test", "rules", os.path.join(workdir, "alerts_test.yaml")],
                         capture_output=True, text=True)
    return out.returncode


THRESHOLD_RE = re.compile(r"(==|!=|>=|<=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$")


def cmd_alerts():
    print("alerts: every alert has tests that fire it and tests that keep it quiet, and both bite")
    rules_path = os.path.join(PROM, "alerts.yaml")
    tests_path = os.path.join(PROM, "alerts_test.yaml")
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    with open(tests_path) as f:
        tests = yaml.safe_load(f)["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (firing if a.get("exp_alerts") else quiet).add(a["alertname"])
    alerts = [(gi, ri, r["alert"]) for gi, g in enumerate(rules["groups"]) for ri, r in enumerate(g["rules"])]
    names = [a for _, _, a in alerts]
    check(len(names) == len(set(names)), "alert names are unique")
    for name in sorted((firing | quiet) - set(names)):
        fail(f"alerts_test.yaml tests {name}, which alerts.yaml does not define")
    for name in names:
        check(name in firing, f"{name}: a test expects it to fire")
        check(name in quiet, f"{name}: a test expects it quiet")
    # Mutations: with the alert made to never fire, or to fire at once on
    # every series it reads (threshold always true, no `for`), the tests
    # must fail; else they do not test that alert.
    with tempfile.TemporaryDirectory() as workdir:
        if promtool_test(rules, tests_path, workdir) != 0:
            fail("promtool test rules fails on the alerts as they are")
        for gi, ri, name in alerts:
            rule = rules["groups"][gi]["rules"][ri]
            never = copy.deepcopy(rules)
            never["groups"][gi]["rules"][ri]["expr"] = "vector(1) == 0"
            check(promtool_test(never, tests_path, workdir) != 0,
                  f"{name}: the tests fail when it never fires")
            if not THRESHOLD_RE.search(rule["expr"]):
                fail(f"{name}: expr ends in no threshold comparison to loosen")
                continue
            always = copy.deepcopy(rules)
            loose = always["groups"][gi]["rules"][ri]
            loose["expr"] = THRESHOLD_RE.sub(">= -Inf", rule["expr"].rstrip())
            loose.pop("for", None)
            check(promtool_test(always, tests_path, workdir) != 0,
                  f"{name}: the tests fail when it fires on every series at once")
    finish("alerts")


# --- compose ------------------------------------------------------------------------


def cmd_compose():
    print("compose: compose.yaml and deploy/compose/haproxy.cfg")
    with open(os.path.join(ROOT, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    check({"gantry-1", "gantry-2", "haproxy", "redis", "postgres"} <= set(services),
          "services gantry-1, gantry-2, haproxy, redis, postgres")
    if failures:
        finish("compose")
    envs = {}
    for name in ("gantry-1", "gantry-2"):
        s = services[name]
        check(s.get("image") == "gantry:latest", f"{name}: image gantry:latest")
        build = s.get("build")
        check(build == "." or (isinstance(build, dict) and build.get("context") == "."), f"{name}: built from .")
        env = s.get("environment", {})
        envs[name] = env
        check(str(env.get("GANTRY__SERVER__BIND")) == "0.0.0.0:8080", f"{name}: binds 0.0.0.0:8080")
        check("redis:6379" in env.get("REDIS_URL", ""), f"{name}: REDIS_URL names the redis service")
        check("@postgres:5432/" in env.get("DATABASE_URL", ""), f"{name}: DATABASE_URL names the postgres service")
        test = json.dumps(s.get("healthcheck", {}).get("test", []))
        check("/v2/health/ready" in test or "gantry-healthcheck" in test,
              f"{name}: healthcheck on /v2/health/ready (the image's gantry-healthcheck)")
        drain = int(env.get("GANTRY__SERVER__DRAIN_DELAY_S", 0)) + int(env.get("GANTRY__SERVER__SHUTDOWN_TIMEOUT_S", 30))
        grace = s.get("stop_grace_period", "10s")
        grace_s = int(grace[:-1]) * (60 if grace.endswith("m") else 1)
        check(grace_s > drain, f"{name}: stop_grace_period {grace} > drain delay + shutdown timeout ({drain} s)")
    check(envs["gantry-1"].get("REDIS_URL") == envs["gantry-2"].get("REDIS_URL")
          and envs["gantry-1"].get("DATABASE_URL") == envs["gantry-2"].get("DATABASE_URL"),
          "both instances share REDIS_URL and DATABASE_URL")
    for name, s in services.items():
        deps = s.get("depends_on", {})
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, cond in deps.items():
            if dep not in services:
                fail(f"{name}: depends on {dep}, which is not a service")
            elif cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                fail(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
    ok("depends_on: services exist; service_healthy ones have healthchecks")
    for name in ("gantry-1", "gantry-2", "redis", "postgres"):
        check("healthcheck" in services[name], f"{name}: healthcheck")
    for name in ("gantry-1", "gantry-2"):
        conds = {d: c.get("condition") for d, c in services[name].get("depends_on", {}).items()}
        check(conds == {"redis": "service_healthy", "postgres": "service_healthy"},
              f"{name}: starts once redis and postgres are healthy")
    hap = services["haproxy"]
    check(any(str(p) in ("8080:8080", "${GANTRY_PORT:-8080}:8080") for p in hap.get("ports", [])),
          "haproxy: published on host port 8080 (GANTRY_PORT)")
    check(any(str(v).startswith("./deploy/compose/haproxy.cfg:") for v in hap.get("volumes", [])),
          "haproxy: runs deploy/compose/haproxy.cfg")
    with open(os.path.join(ROOT, "deploy", "compose", "haproxy.cfg")) as f:
        cfg = f.read()
    wanted = set(re.findall(r'"\$\{([A-Z0-9_]+)\}"', cfg))
    check(wanted == {"LISTEN_ADDR", "GANTRY_1_ADDR", "GANTRY_2_ADDR"},
          f"haproxy.cfg: addresses from LISTEN_ADDR, GANTRY_1_ADDR, GANTRY_2_ADDR ({sorted(wanted)})")
    henv = hap.get("environment", {})
    check(wanted <= set(henv), "haproxy: compose sets every variable haproxy.cfg reads")
    check(henv.get("GANTRY_1_ADDR") == "gantry-1:8080" and henv.get("GANTRY_2_ADDR") == "gantry-2:8080",
          "haproxy: backends are gantry-1:8080 and gantry-2:8080")
    check(re.search(r"http-check send meth GET uri /v2/health/ready\b", cfg) is not None
          and re.search(r"http-check expect status 200\b", cfg) is not None,
          "haproxy.cfg: health check GET /v2/health/ready expects 200")
    servers = re.findall(r'^\s*server (\S+) "\$\{(\w+)\}" .*\bcheck\b', cfg, re.M)
    check(servers == [("gantry-1", "GANTRY_1_ADDR"), ("gantry-2", "GANTRY_2_ADDR")],
          "haproxy.cfg: servers gantry-1 and gantry-2 are health-checked")
    check(not re.search(r"^\s*(user|group|chroot|pidfile|daemon)\b", cfg, re.M),
          "haproxy.cfg: no user, chroot, pidfile or daemon (runs unprivileged, in the foreground)")
    finish("compose")


if __name__ == "__main__":
    commands = {"kubernetes": cmd_kubernetes, "metrics": cmd_metrics, "alerts": cmd_alerts, "compose": cmd_compose}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: check.py {'|'.join(commands)}")
    commands[sys.argv[1]]()
