"""A local Git server over smart HTTP: the system's ``git http-backend`` behind a tiny server.

Enough for a Flux ``GitRepository`` (clone and fetch over ``http://127.0.0.1:<port>/``):
``GitServer`` serves every bare repository under its root directory, read-only (pushes go
through the file system with ``Repository.commit``, which is what a test does anyway). It
binds 127.0.0.1 on a free port and runs in a daemon thread; ``stop()`` closes the socket.

Usage::

    with GitServer(root) as server:
        repo = server.create_repository("fleet")
        sha = repo.commit({"cm.yaml": "..."}, "first")
        repo.url                      # http://127.0.0.1:<port>/fleet.git

Needs ``git`` on PATH with its ``git-http-backend`` (``git --exec-path``); without them
``GitServerError`` says what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_AUTHOR = ("-c", "user.name=vmsr test", "-c", "user.email=test@vmstorage.invalid")
_BACKEND_TIMEOUT = 60.0


class GitServerError(RuntimeError):
    """git or git-http-backend is missing, or a git command failed (stderr in the message)."""


class GitServer:
    """Serves the bare repositories under ``root`` over smart HTTP on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._git = _require_git()
        self._backend = _http_backend(self._git)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

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

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            raise GitServerError("git server already started")
        self.root.mkdir(parents=True, exist_ok=True)
        handler = type(
            "_BoundHandler",
            (_Handler,),
            {"project_root": self.root, "backend": self._backend},
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="git-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent); the repositories stay on disk."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def create_repository(self, name: str, *, branch: str = "main") -> Repository:
        """A new, empty bare repository ``<name>.git`` with a work tree to commit from."""
        if not _NAME.fullmatch(name):
            raise GitServerError(f"repository name {name!r}: use [a-z0-9._-]")
        if not self.url:
            raise GitServerError("git server is not running; call start() first")
        bare = self.root / f"{name}.git"
        if bare.exists():
            raise GitServerError(f"repository {name} already exists")
        work = self.root / ".work" / name
        _run(self._git, "init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
        _run(self._git, "init", "--quiet", f"--initial-branch={branch}", str(work))
        _run(self._git, "-C", str(work), "remote", "add", "origin", str(bare))
        return Repository(
            name=name, url=f"{self.url}/{name}.git", branch=branch, work=work, git=self._git
        )


class Repository:
    """One served repository and the work tree the tests commit from (pushed on commit)."""

    def __init__(self, *, name: str, url: str, branch: str, work: Path, git: str) -> None:
        self.name = name
        self.url = url
        self.branch = branch
        self.work = work
        self._git = git

    def commit(self, files: Mapping[str, str | None], message: str) -> str:
        """Write (or, for ``None``, delete) ``files`` (paths relative to the repository
        root), commit, push to the served repository; return the new commit's SHA-1."""
        for relative, text in files.items():
            path = self.work / relative
            if not path.resolve().is_relative_to(self.work.resolve()):
                raise GitServerError(f"{relative!r} is outside the repository")
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        work = str(self.work)
        _run(self._git, "-C", work, "add", "--all")
        _run(self._git, "-C", work, *_AUTHOR, "commit", "--quiet", "--allow-empty", "-m", message)
        _run(self._git, "-C", work, "push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}")
        return self.head()

    def read(self, relative: str) -> str:
        """The text of ``relative`` in the work tree (the last commit, unless edited since)."""
        return (self.work / relative).read_text()

    def head(self) -> str:
        """SHA-1 of the branch head."""
        return _run(self._git, "-C", str(self.work), "rev-parse", "HEAD").strip()

    def flux_revision(self) -> str:
        """The head as Flux writes it in ``status.artifact.revision``: ``<branch>@sha1:<sha>``."""
        return f"{self.branch}@sha1:{self.head()}"


class _Handler(BaseHTTPRequestHandler):
    """Runs git-http-backend as a CGI program for each request (RFC 3875 variables)."""

    protocol_version = "HTTP/1.1"
    project_root: ClassVar[Path]
    backend: ClassVar[str]

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a fetch makes several requests per sync."""

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._read_body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        for header in ("Git-Protocol", "Content-Encoding"):
            if header in self.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
        try:
            result = subprocess.run(
                [self.backend], input=body, env=env, capture_output=True,
                timeout=_BACKEND_TIMEOUT, check=False,
            )
        except subprocess.TimeoutExpired:
            self._reply(504, [("Content-Type", "text/plain")], b"git-http-backend timed out\n")
            return
        status, headers, payload = _parse_cgi(result.stdout)
        if result.returncode != 0 and status == 200 and not payload:
            status, payload = 500, result.stderr[-2000:]
        self._reply(status, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()  # the CRLF after the last chunk (no trailers)
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _parse_cgi(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split CGI output into (status, headers, body); the ``Status:`` header sets the code."""
    head, sep, body = output.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = output.partition(b"\n\n")
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name and name.lower() != "content-length":
            headers.append((name, value.strip()))
    return status, headers, body


def _require_git() -> str:
    git = shutil.which("git")
    if git is None:
        raise GitServerError("git not found on PATH: install git (e.g. apt-get install git)")
    return git


def _http_backend(git: str) -> str:
    exec_path = _run(git, "--exec-path").strip()
    backend = Path(exec_path) / "git-http-backend"
    if not os.access(backend, os.X_OK):
        raise GitServerError(
            f"{backend} not found: the local Git server needs git's http-backend "
            "(part of the standard git package)"
        )
    return str(backend)


def _run(git: str, *args: str) -> str:
    # No global or system config: the user's git settings must not change what is served.
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run(
        [git, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if result.returncode != 0:
        raise GitServerError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout
