"""The NetworkPolicies allow exactly the architecture's flows: default deny both ways, DNS for
every pod, and ingest->redis, aggregator->redis/inference/postgres, dashboard->postgres between
the pods, each on its one port. The rendered policies of every overlay are evaluated as the
NetworkPolicy API defines them (a pod selected by no policy of a direction is open in it; one
selected is open only to what some rule allows), over every pod and container port rendered."""

from __future__ import annotations

import pytest

from .deploy_tools import OVERLAYS, pod_spec, workloads

NAME = "app.kubernetes.io/name"
ARCHITECTURE = {
    ("footfall-ingest", "footfall-redis", 6379),
    ("footfall-aggregator", "footfall-redis", 6379),
    ("footfall-aggregator", "footfall-inference", 50051),
    ("footfall-aggregator", "footfall-postgres", 5432),
    ("footfall-dashboard", "footfall-postgres", 5432),
}
DNS = ({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"}, 53)


def _selects(selector: dict | None, labels: dict) -> bool:
    selector = selector or {}
    assert set(selector) <= {"matchLabels"}, f"evaluator reads matchLabels only: {selector}"
    return (selector.get("matchLabels") or {}).items() <= labels.items()


def _peer_matches(peer: dict, labels: dict, namespace_labels: dict, same_namespace: bool) -> bool:
    if "ipBlock" in peer:
        return True  # worst case: an ipBlock may match pod addresses on some CNIs
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif not same_namespace:
        return False
    return _selects(peer.get("podSelector"), labels)


def _port_matches(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port for p in ports)


def _open(policies: list[dict], direction: str, pod: dict, peer: tuple[dict, dict, bool], port: int) -> bool:
    """Whether ``pod`` (labels) lets ``peer`` (labels, namespace labels, same namespace) through on ``port``."""
    kind, key, peers = {"Ingress": ("Ingress", "ingress", "from"), "Egress": ("Egress", "egress", "to")}[direction]
    selecting = [p["spec"] for p in policies if kind in p["spec"].get("policyTypes", [])
                 and _selects(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True
    return any(_port_matches(rule, port) and (not rule.get(peers) or any(_peer_matches(x, *peer) for x in rule[peers]))
               for spec in selecting for rule in spec.get(key) or [])


def flows(objects: list[dict], policies: list[dict] | None = None) -> set[tuple[str, str, int]]:
    """(from, to, port) over every pair of rendered pods and every container port of the target."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"] if policies is None else policies
    pods = {}
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = {p["containerPort"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
        pods[labels[NAME]] = (labels, ports)
    namespace = {"kubernetes.io/metadata.name": "footfall"}
    out = set()
    for source, (source_labels, _) in pods.items():
        for target, (target_labels, ports) in pods.items():
            for port in ports:
                if _open(policies, "Egress", source_labels, (target_labels, namespace, True), port) and \
                        _open(policies, "Ingress", target_labels, (source_labels, namespace, True), port):
                    out.add((source, target, port))
    return out


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_only_the_architectures_flows_are_open_between_the_pods(overlay, rendered):
    assert flows(rendered[overlay]) == ARCHITECTURE


def test_the_evaluation_can_fail(rendered):
    """Without policies every pod reaches every port; without Redis's own policy the default deny
    cuts ingest and the aggregator off it: the check above sees both."""
    objects = rendered["cpu"]
    assert ("footfall-dashboard", "footfall-redis", 6379) in flows(objects, policies=[])
    without_redis = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] != "footfall-redis"]
    assert flows(objects, without_redis) == ARCHITECTURE - {("footfall-ingest", "footfall-redis", 6379),
                                                            ("footfall-aggregator", "footfall-redis", 6379)}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_default_deny_dns_and_the_outside_ways_in(overlay, rendered):
    objects = rendered[overlay]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = [p["spec"] for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny and set(deny[0]["policyTypes"]) == {"Ingress", "Egress"}, "a default-deny policy"
    stranger = {"app": "something-else"}  # any other pod in the namespace
    namespace = {"kubernetes.io/metadata.name": "footfall"}
    outside = ({"app": "ingress-nginx"}, {"kubernetes.io/metadata.name": "ingress-nginx"}, False)
    for workload in workloads(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        dns_labels, dns_namespace, dns_port = DNS
        assert _open(policies, "Egress", labels, (dns_labels, dns_namespace, False), dns_port), labels[NAME]
        for port in (6379, 5432, 50051, 8501):
            assert not _open(policies, "Ingress", labels, (stranger, namespace, True), port) or (
                labels[NAME] == "footfall-dashboard" and port == 8501), (labels[NAME], port)
        # the analysts' way in (an ingress controller elsewhere) reaches the dashboard only
        reachable = _open(policies, "Ingress", labels, outside, 8501)
        assert reachable == (labels[NAME] == "footfall-dashboard"), labels[NAME]
