"""A real, local Kubernetes control plane: etcd + kube-apiserver + the KubeVirt/CDI CRDs.

``ControlPlane`` runs both processes on 127.0.0.1 (free ports picked at start), keeps
every file (etcd data, certs, keys, tokens, logs, kubeconfig) in one temp dir and removes
it on ``stop()``. There are no controllers: nothing creates default ServiceAccounts,
namespace deletion leaves the namespace Terminating, ownerReference GC does not run.

Authentication is by bearer token: ``admin_token`` (user ``admin`` in ``system:masters``)
from ``--token-auth-file``, and ServiceAccount tokens from the TokenRequest API, signed
with a per-run RSA key. Authorization is RBAC, so a ServiceAccount token without
bindings gets 403, as on a real cluster.

Usage::

    with ControlPlane() as cp:
        api = cp.api()                       # admin pykube.HTTPClient
        ns = cp.create_namespace("demo")
        token = cp.service_account_token(ns, "reconciler")
        cp.write_kubeconfig(path, token)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pykube
import requests
import yaml

from testenv import admission, crds
from testenv.binaries import Binaries, ensure_all

Log = Callable[[str], None]

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
_POLL = 0.05
_WORKDIR_PREFIX = "vmsr-controlplane-"


class ControlPlaneError(RuntimeError):
    """The control plane could not start (the message includes the relevant log tail).

    ``component`` names the process whose log is quoted (``etcd`` or ``kube-apiserver``).
    """

    def __init__(self, message: str, *, component: str = "kube-apiserver") -> None:
        super().__init__(message)
        self.component = component


class ControlPlane:
    """etcd + kube-apiserver with the KubeVirt/CDI CRDs installed; a context manager.

    ``start()`` returns once ``/readyz`` is ok, every CRD is Established and served by
    discovery, and the admission policy standing in for CDI's DataVolume webhook
    (``testenv.admission``) is enforced. ``stop()`` is idempotent and leaves no processes
    and no temp dir behind.
    Attributes (valid between start and stop): ``kubeconfig``, ``server``, ``ca_file``,
    ``admin_token``, ``workdir``. ``apiserver_args`` are appended to kube-apiserver's flags
    (e.g. ``--audit-log-path``/``--audit-policy-file`` for the apply benchmark).
    ``admission_policies=False`` leaves the stand-in out (the real engine installs its own
    once its controllers' users are known; ``binaries.crd_dir`` then names its own CRDs).
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        log: Log = print,
        apiserver_args: Sequence[str] = (),
        admission_policies: bool = True,
    ) -> None:
        self._binaries = binaries
        self._admission_policies = admission_policies
        self._log = log
        self._apiserver_extra = tuple(apiserver_args)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.namespaces_created: list[str] = []  # by ``create_namespace``, in order
        self.workdir: Path | None = None
        self.kubeconfig = Path()
        self.server = ""
        self.ca_file = Path()
        self.admin_token = ""
        self.sa_key_method = ""
        self.started_in: float | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running components, by name (``etcd``, ``kube-apiserver``)."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def start(self) -> None:
        """Start etcd and kube-apiserver, install the CRDs, and wait until all are served.

        On failure everything started so far is stopped and ``ControlPlaneError`` is raised
        with the tail of the failing component's log.
        """
        if self.workdir is not None:
            raise ControlPlaneError("control plane already started")
        binaries = self._binaries or ensure_all(log=self._log)
        begun = time.monotonic()
        _sweep_stale_workdirs()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-"))
            try:
                self._start(binaries)
                break
            except Exception as error:
                # Read the logs before stop() removes them.
                failed = getattr(error, "component", "kube-apiserver")
                tail = self.log_tail(failed)
                self.stop()
                if _PORT_TAKEN in tail and attempt < _PORT_ATTEMPTS:
                    # A free port is only free when picked: another process (another
                    # engine starting beside this one) may bind it before our child does.
                    self._log(f"{failed}: a port picked for it was taken meanwhile; "
                              "starting again on other ports")
                    continue
                message = f"control plane failed to start: {error}\n{tail}"
                raise ControlPlaneError(message, component=failed) from error
            except BaseException:  # KeyboardInterrupt etc.: clean up, do not wrap
                self.stop()
                raise
        self.started_in = time.monotonic() - begun
        self._log(f"control plane ready at {self.server} in {self.started_in:.1f}s")

    def stop(self) -> None:
        """Terminate both processes (SIGTERM, then SIGKILL) and remove the temp dir."""
        # apiserver first: it would otherwise log etcd connection errors while stopping.
        for name in ("kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                _terminate(proc, _STOP_TIMEOUT)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def restart_apiserver(
        self, *, grace: float = 1.0, while_down: Callable[[], None] | None = None
    ) -> None:
        """Stop kube-apiserver (SIGTERM, then SIGKILL after ``grace`` seconds: with watches
        open it would drain them for up to a minute) and start it again with the same command
        on the same port: what an upgrade or a node reboot does to its clients (every
        connection and watch cut, requests refused until the new process serves).

        etcd keeps running, so every object and resourceVersion survives; the certificates,
        tokens and signing key are reused (``ca_file`` and ``kubeconfig`` stay valid) and the
        log goes on in the same file. The new watch cache starts at the current revision, so a
        watch resumed from an older resourceVersion gets 410 Expired and must relist, as on a
        real cluster. Returns once ``/readyz`` is ok and every CRD is served again (their
        watch caches warm), as ``start()`` does; the admission policies are enforced again
        once the new process has read them (moments after ``/readyz``).

        ``while_down`` runs once the old process is gone and before the new one starts (e.g. a
        wait, with its own deadline, for what an outage longer than a Lease does to clients).
        """
        self._require_started()
        assert self.workdir is not None
        proc = self._procs.pop("kube-apiserver")
        command = proc.args  # the full command line, die-with-parent prefix included
        assert isinstance(command, list)
        _terminate(proc, grace)
        try:
            if while_down is not None:
                while_down()  # the server is started again whatever this raises
        finally:
            with (self.workdir / "kube-apiserver.log").open("ab") as log_file:
                self._procs["kube-apiserver"] = subprocess.Popen(
                    command,
                    cwd=self.workdir,
                    env=process_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self._wait("kube-apiserver", self._readyz_ok)
        api = self.api()
        listed = api.get(url="customresourcedefinitions", version="apiextensions.k8s.io/v1")
        api.raise_for_status(listed)
        pending = list(listed.json().get("items") or [])
        deadline = time.monotonic() + _START_TIMEOUT
        while pending:
            pending = [crd for crd in pending if not _crd_served(api, crd)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(crd["metadata"]["name"] for crd in pending)
                raise ControlPlaneError(f"CRDs not served after the restart: {names}")
            if pending:
                time.sleep(_POLL)

    def _start(self, binaries: Binaries) -> None:
        assert self.workdir is not None
        etcd_port, peer_port, api_port = _free_ports(3)
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", _etcd_args(binaries.etcd, self.workdir, etcd_port, peer_port))
        self._wait("etcd", lambda: _etcd_healthy(etcd_url))

        self.admin_token = secrets.token_hex(24)
        (self.workdir / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
        )
        key_file = self.workdir / "sa-signer.key"
        self.sa_key_method = _write_rsa_key(key_file)
        cert_dir = self.workdir / "certs"
        self._spawn(
            "kube-apiserver",
            [
                *_apiserver_args(
                    binaries.kube_apiserver, self.workdir, api_port, etcd_url, key_file
                ),
                *self._apiserver_extra,
            ],
        )
        self.server = f"https://127.0.0.1:{api_port}"
        # Without --tls-cert-file the apiserver self-signs apiserver.crt (SAN 127.0.0.1).
        self.ca_file = cert_dir / "apiserver.crt"
        self._wait("kube-apiserver", self._readyz_ok)

        self.kubeconfig = self.write_kubeconfig(self.workdir / "kubeconfig", self.admin_token)
        self._install_crds(binaries.crd_dir)
        # After the CRDs: the policies match (and their probes create) KubeVirt/CDI objects.
        if self._admission_policies:
            admission.install(self.api(), timeout=_START_TIMEOUT, log=self._log)

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        assert self.workdir is not None
        with (self.workdir / f"{name}.log").open("wb") as log_file:
            self._procs[name] = subprocess.Popen(
                [*_die_with_parent_prefix(), *args],
                cwd=self.workdir,
                env=process_env(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own process group, so stop() can signal the whole group.
                start_new_session=True,
            )

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        proc = self._procs[name]
        while not ready():
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode} during start-up", component=name
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not ready after {_START_TIMEOUT:.0f}s", component=name
                )
            time.sleep(_POLL)

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last ``lines`` lines of a component's log (``etcd`` or ``kube-apiserver``)."""
        if self.workdir is None:
            return ""
        path = self.workdir / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no {path})"
        return f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail)

    def ready(self) -> bool:
        """Whether kube-apiserver answers ``/readyz`` with 200 (its post-start hooks done and
        its informers synced, RBAC's among them)."""
        return self._readyz_ok()

    def _readyz_ok(self) -> bool:
        if not self.ca_file.exists():
            return False
        try:
            response = requests.get(f"{self.server}/readyz", verify=str(self.ca_file), timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    # -- CRDs ------------------------------------------------------------------------

    def _install_crds(self, crd_dir: Path) -> None:
        documents = crds.load_all(crd_dir)
        if not documents:
            raise ControlPlaneError(f"no CRDs found in {crd_dir}")
        api = self.api()
        for crd in documents:
            response = api.post(
                url="customresourcedefinitions",
                version="apiextensions.k8s.io/v1",
                data=json.dumps(crd),
            )
            if not response.ok:
                raise ControlPlaneError(
                    f"CRD {crd['metadata']['name']} rejected ({response.status_code}): "
                    f"{response.text[:2000]}"
                )
        deadline = time.monotonic() + _START_TIMEOUT
        pending = list(documents)
        while pending:
            pending = [crd for crd in pending if not _crd_served(api, crd)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(crd["metadata"]["name"] for crd in pending)
                raise ControlPlaneError(f"CRDs not established/served: {names}")
            if pending:
                time.sleep(_POLL)

    # -- clients and identities --------------------------------------------------------

    def api(self) -> pykube.HTTPClient:
        """A new admin ``pykube.HTTPClient`` (one requests session per client)."""
        self._require_started()
        return pykube.HTTPClient(pykube.KubeConfig.from_file(str(self.kubeconfig)))

    def write_kubeconfig(self, path: Path, token: str) -> Path:
        """Write a kubeconfig for this server authenticating with ``token``; return ``path``.

        The CA is referenced by path (``ca_file``), so the file is only valid while the
        control plane runs.
        """
        self._require_started()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "vmsr-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "vmsr-user", "user": {"token": token}}],
            "contexts": [
                {"name": "vmsr-test", "context": {"cluster": "vmsr-test", "user": "vmsr-user"}}
            ],
            "current-context": "vmsr-test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def create_namespace(self, prefix: str) -> str:
        """Create a namespace named ``<prefix>-<random suffix>`` and return its name."""
        api = self.api()
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": f"{prefix}-"}}
        response = api.post(url="namespaces", data=json.dumps(body))
        api.raise_for_status(response)
        name = str(response.json()["metadata"]["name"])
        self.namespaces_created.append(name)
        return name

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> str:
        """Return a TokenRequest token for ServiceAccount ``namespace/name``.

        Creates the ServiceAccount if missing. The API server refuses expirations below
        600 s. The token has no permissions until RBAC bindings grant some.
        """
        api = self.api()
        body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
        response = api.post(url="serviceaccounts", namespace=namespace, data=json.dumps(body))
        if response.status_code != 409:  # 409: already exists, which is fine
            api.raise_for_status(response)
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        response = api.post(
            url=f"serviceaccounts/{name}/token", namespace=namespace, data=json.dumps(request)
        )
        api.raise_for_status(response)
        return str(response.json()["status"]["token"])

    def _require_started(self) -> None:
        if self.workdir is None or not self.server:
            raise ControlPlaneError("control plane is not running; call start() first")


# -- helpers (module level: no state) ------------------------------------------------------


def _etcd_args(etcd: Path, workdir: Path, client_port: int, peer_port: int) -> list[str]:
    peer = f"http://127.0.0.1:{peer_port}"
    client = f"http://127.0.0.1:{client_port}"
    return [
        str(etcd),
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        # Test data is throw-away; fsync dominates start-up and write latency otherwise.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def _apiserver_args(
    apiserver: Path, workdir: Path, port: int, etcd_url: str, sa_key: Path
) -> list[str]:
    return [
        str(apiserver),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'certs'}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={sa_key}",
        f"--service-account-signing-key-file={sa_key}",
        "--authorization-mode=RBAC",
        f"--token-auth-file={workdir / 'tokens.csv'}",
        # No controller creates the "default" ServiceAccount, which this plugin requires.
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        "--profiling=false",
        # The master-endpoint reconciler rejects a loopback address and logs an error
        # every few seconds; nothing in the tests uses the "kubernetes" Service endpoints.
        "--endpoint-reconciler-type=none",
    ]


_PORT_ATTEMPTS = 3
_PORT_TAKEN = "address already in use"


def _free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (all sockets held open until all are picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _etcd_healthy(url: str) -> bool:
    try:
        response = requests.get(f"{url}/health", timeout=1)
    except requests.RequestException:
        return False
    return response.status_code == 200 and response.json().get("health") == "true"


def _write_rsa_key(path: Path) -> str:
    """Write a 2048-bit RSA private key (PEM) to ``path``; return the method used."""
    try:
        # Optional dependency; the ignore covers environments without it.
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found,unused-ignore]
            serialization,
        )
        from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found,unused-ignore]
            rsa,
        )
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ControlPlaneError(
                "need the 'cryptography' package or the openssl CLI to create the "
                "service-account signing key"
            ) from None
        subprocess.run(
            [openssl, "genrsa", "-out", str(path), "2048"], check=True, capture_output=True
        )
        return "openssl"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return "cryptography"


def _crd_served(api: pykube.HTTPClient, crd: dict[str, Any]) -> bool:
    """True once the CRD is Established, in API discovery, and its list is served."""
    name = crd["metadata"]["name"]
    response = api.get(url=f"customresourcedefinitions/{name}", version="apiextensions.k8s.io/v1")
    if not response.ok:
        return False
    status = response.json().get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conditions.get("Established") != "True":
        return False
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    for version in crd["spec"]["versions"]:
        group_version = f"{group}/{version['name']}"
        discovery = api.get(version=group_version, url="")
        if not discovery.ok:
            return False
        if plural not in {r["name"] for r in discovery.json().get("resources", [])}:
            return False
        # The first request to a CRD creates its storage and watch cache; until the cache
        # is synced, lists and watches get 429 "storage is (re)initializing" (KEP-4568).
        # A real cluster's CRDs are long warm, so warm them here too.
        if api.get(version=group_version, url=plural, params={"limit": "1"}).status_code != 200:
            return False
    return True


def _sweep_stale_workdirs() -> None:
    """Remove temp dirs of control planes whose owning process is gone.

    The owner pid is part of the dir name (``vmsr-controlplane-<pid>-<random>``), so a
    dir being created right now by another live process is never touched. Linux only
    (liveness is read from /proc); elsewhere nothing is swept.
    """
    if not Path("/proc/self/stat").exists():
        return
    for path in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"):
        owner = path.name.removeprefix(_WORKDIR_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, e.g. under an init that never reaps, counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: keep its files
    # Format: "pid (comm) state ..."; comm may contain spaces and parentheses.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``timeout``; always reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group may outlive its leader; make sure nothing in it survives.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


GOGC = "400"
"""Go's garbage-collection target for the environment's processes (Go's default is 100).
The suite is CPU-bound on two cores and kube-apiserver spends a fifth of its CPU in GC at
100; memory is plentiful. Measured on tests/cluster/test_apply_shapes.py (one engine, 11
tests): 142.5 CPU-s at 100, 120.6 at 400 (kube-apiserver 57.7 -> 42.7), wall 144 -> 129 s.
A ``GOGC`` already in the environment wins (``GOGC=100 make test`` measures the default)."""


def process_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with ``GOGC`` unless it names one."""
    merged = dict(os.environ if env is None else env)
    merged.setdefault("GOGC", GOGC)
    return merged


def _die_with_parent_prefix() -> list[str]:
    """Command prefix that makes the kernel SIGKILL the child if its parent dies.

    Covers the case stop() never runs (pytest killed with SIGKILL), so no orphaned
    apiserver keeps ports and CPU; the temp dir left behind is removed by the next start
    (``_sweep_stale_workdirs``). Uses util-linux ``setpriv --pdeathsig`` (not
    ``preexec_fn``, which is unsafe once other threads run). The signal fires
    when the *thread* that started the child exits, so start ControlPlane from a
    long-lived thread (the main thread in pytest and the CLI). Without setpriv: no prefix.
    """
    setpriv = shutil.which("setpriv")
    # KILL, not TERM: both processes get the signal at once, and a kube-apiserver whose
    # etcd is already gone hangs in graceful shutdown. The data is throw-away anyway.
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
