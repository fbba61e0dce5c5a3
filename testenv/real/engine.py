"""``RealEngine``: the test control plane with the upstream controllers, and our node side.

Started in this order, each waited for before the next (a failure names the process and
quotes its log):

1. etcd and kube-apiserver (``ControlPlane``) with KubeVirt's generated CRDs and CDI's, and
   the API server's front-proxy (request-header) CA, so it publishes
   ``kube-system/extension-apiserver-authentication`` as a real cluster does (virt-api
   needs it). The CEL stand-in for CDI's DataVolume webhook is installed (cdi-apiserver does
   not run); KubeVirt's webhooks are the real ones.
2. kube-controller-manager (only ``CONTROLLERS``), kube-scheduler and KWOK (its stages:
   ``objects.kwok_stages``), then the fake nodes, Ready.
3. KubeVirt: the RBAC virt-operator generates, the KubeVirt CR with the status the operator
   would write, virt-api (as ServiceAccount ``kubevirt-apiserver``) with its webhooks
   registered by URL on 127.0.0.1, then virt-controller (as ``kubevirt-controller``: the
   VMI mutating webhook reverts status writes by anyone else), leading.
4. CDI: the CDI CR (Deployed), the upload signer bundles, cdi-operator's RBAC for
   cdi-controller, then cdi-controller (as ServiceAccount ``cdi-sa``) in a private
   mount and network namespace (``unshare``): its hard-coded paths (``/var/run/cdi/token/
   keys``, ``/tmp/ready``) and metrics port (``:8443``) stay off the host; it reaches the
   API server through a Unix-socket relay (``testenv.real.relay``). From there it also
   reaches CDI's worker pods, for their copy progress (``https://<podIP>:8443/metrics``):
   their IPs (``WORKER_POD_NETWORK``) are local addresses of a second network namespace
   behind a veth pair, where a relay hands port 8443 to the node side's metrics socket.
   Both namespaces are private to the engine: engines side by side share no address or
   port, and nothing of them outlives cdi-controller.
5. The node side (``python -m testenv.node``): virt-handler's part (as ServiceAccount
   ``kubevirt-handler``), CDI's worker pods (with IPs on that network, and their metrics
   endpoint: ``testenv.node.metrics``), the CSI provisioner.

A leader-elected controller (``RESTARTED``) that exits because it lost its leader election
(the API server down longer than its Lease's renew deadline: 10 s for cdi-controller, 20 s
for virt-controller as started here) is started again once the API server is ready, as the
kubelet restarts its pod on a cluster (``restarts`` counts them); any other exit is a death,
reported by ``dead()``.

Logs: ``<control_plane.workdir>/<process>.log`` beside etcd's and kube-apiserver's. The
API server's audit log (``audit_log``) has the requests of the ServiceAccounts of namespace
``AUDITED_NAMESPACE`` only (a test's runners: tests/support/lab.py), writes with their body,
each event written before its answer is sent; nobody else's, so it costs nothing otherwise
(``apiserver_args`` with ``--audit-*`` flags replace it: ``audit_log`` is then None).
Loopback only. Needs root (``unshare``) and the openssl CLI.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pykube
import yaml

from testenv import admission, fastyaml
from testenv.binaries import REPO_ROOT, Binaries, ensure_all
from testenv.controlplane import (
    ControlPlane,
    ControlPlaneError,
    _die_with_parent_prefix,
    _free_ports,
    _pid_alive,
)
from testenv.real import certs, objects
from testenv.real.build import RealBinaries, ensure_real
from testenv.real.processes import Process, ProcessError, http_ok, spawn, wait_ready

Log = Callable[[str], None]

NODES: tuple[str, ...] = ("node-1", "node-2", "node-3")

CONTROLLERS: tuple[str, ...] = (
    "persistentvolume-binder-controller",  # binds PVs, finishes CDI populators' hand-over
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "garbage-collector-controller",  # ownerReferences
    "namespace-controller",
    "node-lifecycle-controller",  # the not-ready taint off KWOK's nodes
    "pod-garbage-collector-controller",
    "disruption-controller",
    "resourcequota-controller",
)
"""kube-controller-manager's controllers that matter here (nothing runs Deployments)."""

RESTARTED: tuple[str, ...] = ("virt-controller", "cdi-controller")
"""Restarted when they exit on a lost leader election (``Process.lost_leadership``)."""
_SUPERVISE_EVERY = 0.2  # seconds between the supervisor's looks at the processes

WORKER_POD_NETWORK = "10.245.0.0/16"
"""CDI worker pods' IPs (KWOK gives its pods 10.244.0.0/16): cdi-controller's network
namespace routes it through a veth to the pods' namespace, where all of it is local."""
_POD_LINK = ("169.254.245.1", "169.254.245.2")  # the veth's ends: cdi-controller's, the pods'

_WORKDIR_PREFIX = "vmsr-real-"
_SA_TOKEN_SECONDS = 7 * 24 * 3600

AUDITED_NAMESPACE = "vmsr-runners"
"""The namespace of the ServiceAccounts whose requests the audit log records."""

AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
# one event per request, once it is answered (a WATCH logs when it ends)
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Request
    userGroups: ["system:serviceaccounts:{AUDITED_NAMESPACE}"]
    verbs: [create, update, patch, delete, deletecollection]
  - level: Metadata
    userGroups: ["system:serviceaccounts:{AUDITED_NAMESPACE}"]
  - level: None
"""


class RealEngineError(ControlPlaneError):
    """The real engine could not start; ``component`` names the process that failed."""


class RealEngine:
    """A control plane running upstream KubeVirt, CDI and Kubernetes controllers with our
    node side; a context manager. Attributes between start and stop: ``control_plane``,
    ``binaries``, ``started_in`` (seconds), ``processes`` (by name). ``apiserver_args`` are
    appended to kube-apiserver's flags (e.g. an audit log for benchmarks/apply_bench.py)."""

    def __init__(self, *, log: Log = print, nodes: Sequence[str] = NODES,
                 feature_gates: Sequence[str] = objects.FEATURE_GATES,
                 copy_seconds_per_gib: float = 0.0, node_side: bool = True,
                 apiserver_args: Sequence[str] = ()) -> None:
        self._log = log
        self.apiserver_args = tuple(apiserver_args)  # appended to kube-apiserver's flags
        self.nodes = tuple(nodes)
        self.feature_gates = tuple(feature_gates)
        self.copy_seconds_per_gib = copy_seconds_per_gib
        self.node_side = node_side
        self.control_plane = ControlPlane(log=log)  # replaced in start()
        self.binaries: RealBinaries | None = None
        self.processes: dict[str, Process] = {}
        self.pki: Path | None = None
        self.started_in: float | None = None
        self.timings: dict[str, float] = {}
        self.audit_log: Path | None = None
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._worker_metrics: certs.Pair | None = None  # the node side's serving pair

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def workdir(self) -> Path:
        """The environment's directory (logs, kubeconfigs): the control plane's."""
        assert self.control_plane.workdir is not None, "the real engine is not running"
        return self.control_plane.workdir

    def start(self) -> None:
        """Build what is missing, start everything, return once all is healthy. On failure
        everything started is stopped and ``RealEngineError`` names the failing process."""
        begun = time.monotonic()
        base = ensure_all(log=self._log)
        self.binaries = ensure_real(log=self._log)
        _sweep_stale()
        self.pki = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-"))
        try:
            self._start(base, self.binaries)
        except BaseException as error:
            component = getattr(error, "component", "real engine")
            self.stop()
            if isinstance(error, Exception) and not isinstance(error, RealEngineError):
                raise RealEngineError(f"the real engine failed to start: {error}",
                                      component=component) from error
            raise
        self.started_in = time.monotonic() - begun
        self._log(f"real engine ready in {self.started_in:.1f}s "
                  f"({', '.join(f'{k} {v:.1f}s' for k, v in self.timings.items())})")

    def stop(self) -> None:
        """Stop every process (node side first, API server last) and remove the files."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        for name in reversed(list(self.processes)):
            self.processes.pop(name).stop()
        self.control_plane.stop()
        if self.pki is not None:
            shutil.rmtree(self.pki, ignore_errors=True)
            self.pki = None
            self.audit_log = None

    def api(self) -> pykube.HTTPClient:
        """An admin client."""
        return self.control_plane.api()

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The tail of a process's log (``etcd`` and ``kube-apiserver`` included)."""
        if name in self.processes:
            return self.processes[name].tail(lines)
        return self.control_plane.log_tail(name, lines)

    def dead(self) -> list[str]:
        """The processes that exited (they should all run until ``stop``); one of
        ``RESTARTED`` that lost its leader election counts only until it is started again."""
        return [name for name, proc in self.processes.items() if not proc.alive()]

    @property
    def restarts(self) -> dict[str, int]:
        """How often each process was started again after losing its leader election."""
        return {name: proc.restarts for name, proc in self.processes.items() if proc.restarts}

    def _supervise(self) -> None:
        """Start ``RESTARTED`` processes again when they exit on a lost leader election, until
        ``stop``. (This thread spawns them, and their death signal follows the thread that
        spawned them: it outlives them, as ``stop`` stops them after joining it.)"""
        while not self._stopping.wait(_SUPERVISE_EVERY):
            for name in RESTARTED:
                proc = self.processes.get(name)
                # not before the API server is ready: a controller started meanwhile meets
                # its RBAC not yet loaded (403 on discovery) and cdi-controller exits on it
                if (proc is not None and proc.lost_leadership()
                        and self.control_plane.ready()):
                    self._log(f"{name} lost its leader election (exit code "
                              f"{proc.popen.returncode}): started again, as the kubelet would")
                    try:
                        proc.restart()
                    except OSError as error:  # stays dead: dead() reports it
                        self._log(f"{name} could not be started again: {error}")

    # -- start-up --------------------------------------------------------------------------

    def _start(self, base: Binaries, real: RealBinaries) -> None:
        assert self.pki is not None
        pki = self.pki
        self._log(f"real engine: KubeVirt {real.kubevirt_version}, CDI {real.cdi_version}, "
                  f"Kubernetes {real.kube_version}, KWOK {real.kwok_version}")
        ca = certs.ca(pki, "ca")
        front_proxy_ca = certs.ca(pki, "front-proxy-ca")
        front_proxy = certs.leaf(pki, "front-proxy-client", front_proxy_ca)
        manifests = fastyaml.load_all(real.kubevirt_manifests.read_text())
        crd_dir = pki / "crds"
        crd_dir.mkdir()
        for doc in manifests:
            if doc["kind"] == "CustomResourceDefinition":
                (crd_dir / f"{doc['metadata']['name']}.yaml").write_text(fastyaml.dump(doc))
        for path in sorted(real.cdi_crd_dir.glob("*.yaml")):
            shutil.copyfile(path, crd_dir / f"cdi-{path.name}")

        audit: list[str] = []
        if not any(a.startswith("--audit-") for a in self.apiserver_args):  # else theirs
            policy = pki / "audit-policy.yaml"
            policy.write_text(AUDIT_POLICY)
            self.audit_log = pki / "audit.log"
            audit = [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                     "--audit-log-format=json", "--audit-log-mode=blocking"]
        self.control_plane = ControlPlane(
            Binaries(base.kube_apiserver, base.etcd, crd_dir), log=self._log,
            admission_policies=False,
            apiserver_args=[
                *audit,
                f"--requestheader-client-ca-file={front_proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy.cert}",
                f"--proxy-client-key-file={front_proxy.key}",
                *self.apiserver_args,
            ])
        step = time.monotonic()
        self.control_plane.start()
        self.timings["control plane"] = time.monotonic() - step
        api = self.api()
        _install_dv_policy(api)

        step = time.monotonic()
        # Started from this thread (setpriv's death signal fires when the starting thread
        # ends), all three at once, then waited for.
        waits = [self._start_kube_controller_manager(real), self._start_kube_scheduler(real),
                 self._start_kwok(real)]
        for ready in waits:
            ready()
        for name in self.nodes:
            _create(api, "v1", "nodes", objects.fake_node(name))
        self._wait(self.processes["kwok"],
                   lambda: all(_node_ready(api, n) for n in self.nodes), "keeping nodes Ready")
        self.timings["kube controllers, KWOK, nodes"] = time.monotonic() - step

        step = time.monotonic()
        for name in (objects.KUBEVIRT_NAMESPACE, objects.CDI_NAMESPACE):
            _create(api, "v1", "namespaces",
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for doc in manifests:
            if doc["kind"] not in ("CustomResourceDefinition", "ValidatingWebhookConfiguration",
                                   "MutatingWebhookConfiguration"):
                _create_manifest(api, doc)
        self._start_kubevirt(real, manifests, ca)
        self.timings["KubeVirt"] = time.monotonic() - step

        step = time.monotonic()
        for doc in fastyaml.load_all(real.cdi_manifests.read_text()):
            _create_manifest(api, doc)
        self._start_cdi(real, ca)
        self.timings["CDI"] = time.monotonic() - step
        if self.node_side:
            step = time.monotonic()
            self._start_node_side()
            self.timings["node side"] = time.monotonic() - step
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="real-engine-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def _kubeconfig(self, name: str, token: str, *, inline_ca: bool = False) -> Path:
        """A kubeconfig for ``token`` in the environment's directory."""
        path = self.workdir / f"{name}.kubeconfig"
        self.control_plane.write_kubeconfig(path, token)
        if inline_ca:  # for a process that cannot see the host's /tmp
            config = fastyaml.load(path.read_text())
            cluster = config["clusters"][0]["cluster"]
            ca_file = Path(cluster.pop("certificate-authority"))
            cluster["certificate-authority-data"] = base64.b64encode(ca_file.read_bytes()) \
                .decode()
            path.write_text(fastyaml.dump(config))
        return path

    def _start_kube_controller_manager(self, real: RealBinaries) -> Callable[[], None]:
        kubeconfig = self.control_plane.kubeconfig
        port = _free_ports(1)[0]
        proc = self._spawn("kube-controller-manager", [
            str(real.kube_controller_manager), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'kube-controller-manager-certs'}",
            "--leader-elect=false", f"--controllers={','.join(CONTROLLERS)}",
            "--node-monitor-grace-period=60s", "--concurrent-gc-syncs=5", "-v=1",
        ])
        return lambda: self._wait(proc, lambda: http_ok(f"https://127.0.0.1:{port}/healthz"),
                                  "healthy")

    def _start_kube_scheduler(self, real: RealBinaries) -> Callable[[], None]:
        kubeconfig = self.control_plane.kubeconfig
        port = _free_ports(1)[0]
        proc = self._spawn("kube-scheduler", [
            str(real.kube_scheduler), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'kube-scheduler-certs'}", "--leader-elect=false",
            "-v=1",
        ])
        return lambda: self._wait(proc, lambda: http_ok(f"https://127.0.0.1:{port}/healthz"),
                                  "healthy")

    def _start_kwok(self, real: RealBinaries) -> Callable[[], None]:
        config = self.workdir / "kwok.yaml"
        config.write_text(yaml.safe_dump_all(objects.kwok_stages(), sort_keys=False))
        port = _free_ports(1)[0]
        proc = self._spawn("kwok", [
            str(real.kwok), f"--kubeconfig={self.control_plane.kubeconfig}",
            f"--config={config}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{port}", "--node-ip=10.88.0.1",
            "--cidr=10.244.0.0/16", "--node-lease-duration-seconds=40", "-v=INFO",
        ], env={**os.environ, "HOME": str(self.workdir)})
        return lambda: self._wait(proc, lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
                                  "healthy")

    def _start_kubevirt(self, real: RealBinaries, manifests: list[dict[str, Any]],
                        ca: certs.Pair) -> None:
        assert self.pki is not None
        api = self.api()
        namespace = objects.KUBEVIRT_NAMESPACE
        ca_pem = ca.cert.read_bytes()
        _create(api, "v1", f"namespaces/{namespace}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubevirt-ca", "namespace": namespace},
            "data": {"ca-bundle": ca_pem.decode()}})
        cr = _create(api, "kubevirt.io/v1", f"namespaces/{namespace}/kubevirts",
                     objects.kubevirt_cr(self.feature_gates))
        status = objects.kubevirt_status(real.kubevirt_version,
                                         int(cr["metadata"].get("generation", 1)), _now())
        _request(api, "PATCH", "kubevirt.io/v1",
                 f"namespaces/{namespace}/kubevirts/kubevirt/status", {"status": status},
                 content_type="application/merge-patch+json")

        serving = certs.leaf(self.pki, "virt-api", ca, dns=("localhost", "virt-api.kubevirt.svc"))
        handler = certs.leaf(self.pki, "virt-handler-client", ca)
        api_port, controller_port = _free_ports(2)
        token = self.control_plane.service_account_token(
            namespace, "kubevirt-apiserver", expiration_seconds=_SA_TOKEN_SECONDS)
        proc = self._spawn("virt-api", [
            str(real.virt_api), f"--kubeconfig={self._kubeconfig('virt-api', token)}",
            "--listen=127.0.0.1", f"--port={api_port}",
            f"--tls-cert-file={serving.cert}", f"--tls-key-file={serving.key}",
            f"--handler-cert-file={handler.cert}", f"--handler-key-file={handler.key}",
            "--subresources-only", "-v=2",
        ])
        self._wait(proc, lambda: http_ok(
            f"https://127.0.0.1:{api_port}/apis/subresources.kubevirt.io/v1/healthz"), "healthy")
        for doc in manifests:
            if doc["kind"] in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
                plural = doc["kind"].lower() + "s"
                _create(api, "admissionregistration.k8s.io/v1", plural,
                        objects.webhook_by_url(doc, api_port, ca_pem))
        self._wait(proc, lambda: _vm_webhook_enforced(api), "admitting (its webhooks)")

        token = self.control_plane.service_account_token(
            namespace, "kubevirt-controller", expiration_seconds=_SA_TOKEN_SECONDS)
        prom = certs.leaf(self.pki, "virt-controller", ca)
        proc = self._spawn("virt-controller", [
            str(real.virt_controller),
            f"--kubeconfig={self._kubeconfig('virt-controller', token)}",
            "--listen=127.0.0.1", f"--port={controller_port}",
            f"--launcher-image=vmsr.invalid/kubevirt/virt-launcher:{real.kubevirt_version}",
            f"--exporter-image=vmsr.invalid/kubevirt/virt-exportserver:{real.kubevirt_version}",
            f"--prom-cert-file={prom.cert}", f"--prom-key-file={prom.key}",
            "--leader-elect-lease-duration=30s", "--leader-elect-renew-deadline=20s",
            "--leader-elect-retry-period=1s", "-v=2",
        ])
        self._wait(proc, lambda: http_ok(f"https://127.0.0.1:{controller_port}/leader"),
                   "leading")

    def _start_cdi(self, real: RealBinaries, ca: certs.Pair) -> None:
        assert self.pki is not None
        api = self.api()
        namespace = objects.CDI_NAMESPACE
        _create(api, "cdi.kubevirt.io/v1beta1", "cdis",
                {**objects.cdi_cr(), "status": objects.cdi_status(real.cdi_version, _now())})
        _request(api, "PATCH", "cdi.kubevirt.io/v1beta1", "cdis/cdi/status",
                 {"status": objects.cdi_status(real.cdi_version, _now())},
                 content_type="application/merge-patch+json", ok_404=True)
        signers = {}
        for name in ("cdi-uploadserver-signer", "cdi-uploadserver-client-signer"):
            signers[name] = certs.ca(self.pki, name)
            _create(api, "v1", f"namespaces/{namespace}/configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": f"{name}-bundle", "namespace": namespace},
                "data": {"ca-bundle.crt": signers[name].cert.read_text()}})
        token_keys = certs.rsa_pair(self.pki, "cdi-token")
        socket_path = self.pki / "api.sock"
        api_port = int(self.control_plane.server.rsplit(":", 1)[1])
        relay = Path(__file__).with_name("relay.py")
        relay_proc = self._spawn("cdi-api-relay", [
            sys.executable, str(relay), f"unix:{socket_path}", f"tcp:127.0.0.1:{api_port}"])
        self._wait(relay_proc, socket_path.exists, "listening")
        token = self.control_plane.service_account_token(
            namespace, "cdi-sa", expiration_seconds=_SA_TOKEN_SECONDS)
        kubeconfig = self._kubeconfig("cdi-controller", token, inline_ca=True)
        shutil.copyfile(kubeconfig, self.pki / "cdi-controller.kubeconfig")
        server = signers["cdi-uploadserver-signer"]
        client = signers["cdi-uploadserver-client-signer"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KUBECONFIG": str(self.pki / "cdi-controller.kubeconfig"),
            "IMPORTER_IMAGE": f"vmsr.invalid/cdi/cdi-importer:{real.cdi_version}",
            "CLONER_IMAGE": f"vmsr.invalid/cdi/cdi-cloner:{real.cdi_version}",
            "UPLOADSERVER_IMAGE": f"vmsr.invalid/cdi/cdi-uploadserver:{real.cdi_version}",
            "OVIRT_POPULATOR_IMAGE": f"vmsr.invalid/cdi/ovirt-populator:{real.cdi_version}",
            "UPLOADPROXY_SERVICE": "cdi-uploadproxy",
            "PULL_POLICY": "IfNotPresent",
            "UPLOAD_SERVER_KEY_FILE": str(server.key),
            "UPLOAD_SERVER_CERT_FILE": str(server.cert),
            "UPLOAD_CLIENT_KEY_FILE": str(client.key),
            "UPLOAD_CLIENT_CERT_FILE": str(client.cert),
            "INSTALLER_PART_OF_LABEL": "vmsr-testenv",
            "INSTALLER_VERSION_LABEL": real.cdi_version,
        }
        setpriv = " ".join(_die_with_parent_prefix())  # the relay dies with cdi-controller
        # The inner relay and cdi-controller run after /tmp is replaced by a tmpfs, where a
        # checkout, a venv or a binary cache under /tmp (CI clones there; VMSR_CACHE_DIR may
        # point there) is out of sight: the interpreter by its real path, the relay (standard
        # library only) copied beside the keys, which stay visible, and the binary
        # bind-mounted into /run first.
        python = os.path.realpath(sys.executable)
        inner_relay = self.pki / "relay.py"
        shutil.copyfile(relay, inner_relay)
        unshare = shutil.which("unshare")
        if unshare is None:
            raise RealEngineError("cdi-controller needs util-linux unshare (a private mount "
                                  "and network namespace)", component="cdi-controller")
        ours, theirs = _POD_LINK
        # The worker pods' namespace: its relay is started by the script (it dies with
        # cdi-controller), the veth pair moved into it once that relay listens (then the
        # namespace exists); the pod network is a local route there, a route via the veth
        # here. cdi-controller's own metrics listener takes every address's :8443 in its
        # namespace, hence the second one.
        pods_setup = (f"set -e; ip link set lo up; ip addr add {theirs}/30 dev eth0; "
                      f"ip link set eth0 up; ip route add local {WORKER_POD_NETWORK} dev lo")
        script = f"""set -e
ip link set lo up
mount -t tmpfs -o mode=0755 vmsr-run /run
mkdir -p /run/cdi/token/keys /run/vmsr-keep
cp {token_keys.key} /run/cdi/token/keys/id_rsa
cp {token_keys.cert} /run/cdi/token/keys/id_rsa.pub
mount --bind {self.pki} /run/vmsr-keep
touch /run/vmsr-cdi-controller
mount --bind {real.cdi_controller} /run/vmsr-cdi-controller
mount -t tmpfs -o mode=1777 vmsr-tmp /tmp
mkdir -p {self.pki}
mount --bind /run/vmsr-keep {self.pki}
{setpriv} {python} {inner_relay} tcp:127.0.0.1:{api_port} unix:{socket_path} \
    /run/vmsr-relay.ready &
{setpriv} {unshare} --net {python} {inner_relay} tcp:0.0.0.0:8443 \
    unix:{self.pki / 'worker-metrics.sock'} /run/vmsr-pods.ready &
pods=$!
while [ ! -e /run/vmsr-relay.ready ] || [ ! -e /run/vmsr-pods.ready ]; do sleep 0.05; done
ip link add vmsr-pods type veth peer name eth0 netns $pods
ip addr add {ours}/30 dev vmsr-pods
ip link set vmsr-pods up
nsenter --net=/proc/$pods/ns/net sh -c '{pods_setup}'
ip route add {WORKER_POD_NETWORK} via {theirs} dev vmsr-pods
exec /run/vmsr-cdi-controller -v=1 --kubeconfig={self.pki / 'cdi-controller.kubeconfig'}
"""
        proc = self._spawn("cdi-controller", [unshare, "--mount", "--net",
                                              "--propagation", "private", "sh", "-c", script],
                           env=env)
        # made while cdi-controller starts; any pair will do: cdi-controller's metrics client
        # does not verify (CDI's BuildHTTPClient), as the worker's own is self-signed
        self._worker_metrics = certs.leaf(self.pki, "cdi-worker-metrics", ca, ips=(),
                                          dns=("cdi-worker-metrics",))
        self._wait(proc, lambda: _cdi_config_ready(api), "serving (CDIConfig status)")
        # What cdi-operator does with the CR's spec.config (cdi-controller only creates the
        # CDIConfig): without it HonorWaitForFirstConsumer is off and imports on a
        # WaitForFirstConsumer class bind at once, through the importer pod.
        _request(api, "PATCH", "cdi.kubevirt.io/v1beta1", "cdiconfigs/config",
                 {"spec": objects.cdi_cr()["spec"]["config"]},
                 content_type="application/merge-patch+json")

    def _start_node_side(self) -> None:
        handler_token = self.control_plane.service_account_token(
            objects.KUBEVIRT_NAMESPACE, "kubevirt-handler", expiration_seconds=_SA_TOKEN_SECONDS)
        handler = self._kubeconfig("virt-handler", handler_token)
        ready = self.workdir / "node-side.ready"
        assert self.pki is not None and self._worker_metrics is not None
        proc = self._spawn("node-side", [
            sys.executable, "-m", "testenv.node",
            f"--kubeconfig={self.control_plane.kubeconfig}",
            f"--handler-kubeconfig={handler}", f"--ready-file={ready}",
            f"--copy-seconds-per-gib={self.copy_seconds_per_gib}",
            f"--pod-network={WORKER_POD_NETWORK}",
            f"--metrics-socket={self.pki / 'worker-metrics.sock'}",
            f"--metrics-cert={self._worker_metrics.cert}",
            f"--metrics-key={self._worker_metrics.key}",
        ], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        self._wait(proc, ready.exists, "synced")

    def _spawn(self, name: str, args: list[str], *, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> Process:
        proc = spawn(name, args, self.workdir, env=env, cwd=cwd)
        self.processes[name] = proc
        return proc

    def _wait(self, proc: Process, ready: Callable[[], bool], what: str) -> None:
        try:
            took = wait_ready(proc, ready, what=what)
        except ProcessError as error:
            raise RealEngineError(str(error), component=error.component) from None
        self._log(f"{proc.name} {what} in {took:.1f}s (log: {proc.log})")


# -- API helpers ----------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _url(version: str, path: str) -> str:
    return f"/api/{version}/{path}" if version == "v1" else f"/apis/{version}/{path}"


def _request(api: pykube.HTTPClient, method: str, version: str, path: str, body: Any = None,
             *, content_type: str = "application/json", ok_404: bool = False,
             params: dict[str, str] | None = None) -> Any:
    url = str(api.url).rstrip("/") + _url(version, path)
    kwargs: dict[str, Any] = {"timeout": 30, "params": params}
    if body is not None:
        kwargs["data"] = json.dumps(body)
        kwargs["headers"] = {"Content-Type": content_type}
    response = api.session.request(method, url, **kwargs)
    if ok_404 and response.status_code == 404:
        return None
    if not response.ok:
        raise RealEngineError(f"{method} {path} failed ({response.status_code}): "
                              f"{response.text[:2000]}", component="kube-apiserver")
    return response.json() if response.content else None


def _create(api: pykube.HTTPClient, version: str, path: str, body: dict[str, Any]) -> Any:
    return _request(api, "POST", version, path, body)


def _create_manifest(api: pykube.HTTPClient, doc: dict[str, Any]) -> None:
    kind, meta = doc["kind"], doc["metadata"]
    version = doc["apiVersion"]
    plural = {"ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
              "ClusterRoleBinding": "clusterrolebindings", "Role": "roles",
              "RoleBinding": "rolebindings"}[kind]
    body = {k: v for k, v in doc.items() if k != "status"}
    body["metadata"] = {k: v for k, v in meta.items() if k != "creationTimestamp"}
    path = f"namespaces/{meta['namespace']}/{plural}" if meta.get("namespace") else plural
    url = str(api.url).rstrip("/") + _url(version, path)
    response = api.session.post(url, data=json.dumps(body), timeout=30)
    if response.status_code == 409:  # GetAllController and GetAllCluster share a few
        return
    if not response.ok:
        raise RealEngineError(f"{kind} {meta['name']} rejected ({response.status_code}): "
                              f"{response.text[:1000]}", component="kube-apiserver")


CONTROLLER_USERS: tuple[str, ...] = (
    "system:serviceaccount:cdi:cdi-sa",
    "system:serviceaccount:kubevirt:kubevirt-controller",
)
"""Exempt from the DataVolume policy: the controllers re-serialize a DataVolume's spec from
their Go object when they update its metadata (``resources: {}`` for an absent field), which
cdi-apiserver's semantic comparison accepts and a CEL ``==`` does not."""


def _install_dv_policy(api: pykube.HTTPClient) -> None:
    """The CEL stand-in for cdi-apiserver's DataVolume validation (UPDATE: the spec is
    immutable): cdi-apiserver does not run here. Requests of the controllers
    (``CONTROLLER_USERS``) are not judged by it."""
    for doc in admission.manifests():
        if doc["kind"] == "ValidatingAdmissionPolicy":
            users = ", ".join(json.dumps(u) for u in CONTROLLER_USERS)
            doc["spec"].setdefault("matchConditions", []).append({
                "name": "not-a-controller",
                "expression": f"!(request.userInfo.username in [{users}])"})
        plural = ("validatingadmissionpolicies" if doc["kind"] == "ValidatingAdmissionPolicy"
                  else "validatingadmissionpolicybindings")
        _create(api, admission.API_VERSION, plural, doc)


def _node_ready(api: pykube.HTTPClient, name: str) -> bool:
    node = _request(api, "GET", "v1", f"nodes/{name}")
    conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions") or []}
    taints = [t.get("key") for t in node.get("spec", {}).get("taints") or []]
    return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints


def _vm_webhook_enforced(api: pykube.HTTPClient) -> bool:
    """True once virt-api's VM validator answers: a dry-run VM with both ``running`` and
    ``runStrategy`` is refused by it."""
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vmsr-webhook-probe", "namespace": "default"},
            "spec": {"running": False, "runStrategy": "Halted",
                     "template": {"spec": {"domain": {"devices": {}}}}}}
    url = str(api.url).rstrip("/") + _url("kubevirt.io/v1", "namespaces/default/virtualmachines")
    response = api.session.post(url, params={"dryRun": "All"}, data=json.dumps(body), timeout=10)
    return response.status_code == 422 and "virtualmachine-validator" in response.text


def _cdi_config_ready(api: pykube.HTTPClient) -> bool:
    config = _request(api, "GET", "cdi.kubevirt.io/v1beta1", "cdiconfigs/config", ok_404=True)
    return bool(config and (config.get("status") or {}).get("filesystemOverhead"))


def _sweep_stale() -> None:
    """Remove PKI dirs of engines whose process is gone (``vmsr-real-<pid>-*``)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"):
        owner = path.name.removeprefix(_WORKDIR_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
