"""Secrets never printed (issue 14, item 11): ``model.text.redact_urls`` is the one redaction of
every URL the program prints (userinfo with ``@``, ``/``, ``:``, spaces, tabs and percent
escapes; every query and fragment value; malformed URLs), ``split_userinfo`` takes credentials
out of a URL by the same rule, and the command line prints none of them: a ``--git-repo`` that
is refused, one that cannot be reached (``--debug`` included), a ``--pushgateway`` given with
credentials, and a ``--pushgateway-auth-file`` that cannot be used.

Each CLI case printed its secret on 2d06030 (``gitsource.redact`` removed only a
``user:pass@`` free of ``@``, ``/`` and spaces, and no query value).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.model.text import parse_credentials, redact_urls, split_userinfo

SECRET = "s3cr3t"

# (text, what redact_urls makes of it); every secret in the texts contains SECRET.
CASES = [
    ("https://user:s3cr3t@host/r.git", "https://***@host/r.git"),
    ("https://user:s3cr3t@p@host/r.git", "https://***@host/r.git"),  # '@' in the password
    ("https://user:s3cr3t/x@host/r.git", "https://***@host/r.git"),  # '/' in the password
    ("https://user:a:s3cr3t@host:8443/r.git", "https://***@host:8443/r.git"),  # ':' in it
    ("https://user:s3cr3t%40x%2F@host/r.git", "https://***@host/r.git"),  # percent escapes
    ("https://user:p@ss s3cr3t@host/r.git", "https://***@host/r.git"),  # a space (malformed)
    ("https://user:p\ts3cr3t@host/r.git", "https://***@host/r.git"),  # a tab (malformed)
    ("https://s3cr3t@host/r.git", "https://***@host/r.git"),  # a token as the user name
    ("fatal: unable to access 'http://s3cr3t@127.0.0.1:1/x.git/'",
     "fatal: unable to access 'http://***@127.0.0.1:1/x.git/'"),
    ("https://host/r.git?token=s3cr3t", "https://host/r.git?token=***"),
    ("https://host/r.git?access_token=s3cr3t&ref=main", "https://host/r.git?access_token=***&ref=***"),
    ("https://gitlab/r.git?private_token=s3cr3t", "https://gitlab/r.git?private_token=***"),
    ("https://h/m?password=s3cr3t;x=1", "https://h/m?password=***;x=***"),
    ("https://acct.blob/c?sv=2024&sig=s3cr3t%2Bx%3D", "https://acct.blob/c?sv=***&sig=***"),
    ("https://b.s3/o?X-Amz-Credential=AK&X-Amz-Signature=s3cr3t",
     "https://b.s3/o?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("https://h/cb#access_token=s3cr3t&type=bearer", "https://h/cb#access_token=***&type=***"),
    ("https://h/r?s3cr3t", "https://h/r?***"),  # a bare value
    ("'https://h/r?sig=s3cr3t': failed", "'https://h/r?sig=***': failed"),
    ("ssh://git@host:22/r and HTTPS://a:s3cr3t@c/d", "ssh://***@host:22/r and HTTPS://***@c/d"),
    ("https://user:a://s3cr3t@host/r", "https://***@host/r"),  # '://' in the password
    ("one https://u:s3cr3t@h/a\nnext line: mail@x", "one https://***@h/a\nnext line: mail@x"),
    # When in doubt more goes: a later '@' on the line may end a password with a space.
    ("https://host/r@v1, mail s3cr3t@x", "https://***@x"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "redacted"), CASES)
def test_redact_urls_removes_userinfo_and_query_values(text: str, redacted: str) -> None:
    assert redact_urls(text) == redacted
    assert SECRET not in redact_urls(text)


@pytest.mark.parametrize(
    "text",
    [
        "no URL at all: user:pass@host is not one",
        "git@github.com:org/plans.git",  # scp-like: no secret, left alone
        "file:///srv/plans.git and /tmp/a-b",
        "https://host/org/plans.git",
        "http://127.0.0.1:9091",
    ],
)
def test_text_without_credentials_is_left_as_it_is(text: str) -> None:
    assert redact_urls(text) == text


@pytest.mark.parametrize(
    ("url", "public", "user", "password"),
    [
        ("https://u:s3cr3t/p@ss word@host/r.git", "https://host/r.git", "u", "s3cr3t/p@ss word"),
        ("https://u:s3cr3t%40%2F@host:8/r", "https://host:8/r", "u", "s3cr3t@/"),
        ("https://s3cr3t@host/r", "https://host/r", "s3cr3t", None),
        ("https://host/r.git", "https://host/r.git", None, None),
        ("git@host:org/r.git", "git@host:org/r.git", None, None),
    ],
)  # fmt: skip
def test_split_userinfo_takes_out_what_redaction_hides(
    url: str, public: str, user: str | None, password: str | None
) -> None:
    assert split_userinfo(url) == (public, user, password)
    assert redact_urls(url).replace("***@", "") == redact_urls(public)


def test_a_credentials_line_is_user_and_secret_or_a_token() -> None:
    assert parse_credentials("reader:s3cr3t:with:colons\n") == ("reader", "s3cr3t:with:colons")
    assert parse_credentials("  ghp_s3cr3t  \r\nsecond line ignored") == (None, "ghp_s3cr3t")
    for bad in ("", "\n", "reader:", "reader:\n"):
        with pytest.raises(ValueError) as caught:
            parse_credentials(bad)
        assert "reader" not in str(caught.value)


# -- the command line ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out + err


@pytest.mark.parametrize(
    "url",
    [
        "https://reader:p@ss s3cr3t@git.example/plans.git",
        "https://reader:p\ts3cr3t@git.example/plans.git",
        "https://reader:s3cr3t@git.example/plans git",  # a space in the path
        "https://git.example/plans.git?private_token=glpat s3cr3t",
    ],
)
def test_a_refused_git_repo_never_echoes_its_credentials(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, printed = run(
        capsys, "plan", "--git-repo", url, "--git-cache", str(tmp_path / "cache"), "-o", "json",
    )  # fmt: skip
    assert rc == 2, printed
    assert "--git-repo" in printed and "not valid" in printed
    assert SECRET not in printed and "p@ss" not in printed and "glpat" not in printed, printed


@pytest.mark.parametrize(
    "template",
    [
        "http://reader:s3cr3t/x@127.0.0.1:{port}/plans.git",
        "http://reader:p@s3cr3t@127.0.0.1:{port}/plans.git",
        "http://127.0.0.1:{port}/plans.git?private_token=s3cr3t",
        "http://127.0.0.1:{port}/plans.git?X-Amz-Signature=s3cr3t&access_token=s3cr3t",
    ],
)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_unreachable_git_repo_never_prints_its_credentials(
    template: str, log_format: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = template.format(port=closed_port())
    rc, printed = run(
        capsys, "plan", "--git-repo", url, "--git-cache", str(tmp_path / "cache"),
        "--git-timeout", "20", "--debug", "--log-format", log_format,
    )  # fmt: skip
    assert rc == 6, printed
    assert "127.0.0.1" in printed
    assert SECRET not in printed, printed


def test_a_pushgateway_with_credentials_is_never_echoed_and_a_bad_auth_file_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plans = tmp_path / "p.yaml"
    plans.write_text(
        "apiVersion: vmstorage.dev/v1alpha1\nkind: StoragePlan\nmetadata: {name: p}\n"
        "spec: {namespace: ns, storageClass: new, virtualMachines: [{name: vm1}]}\n"
    )
    secret_file = tmp_path / "auth"
    secret_file.write_text("pusher-without-a-colon-s3cr3t\n")
    base = ["apply", str(plans), "--kubeconfig", str(tmp_path / "no-kubeconfig")]

    rc, printed = run(
        capsys, *base, "--pushgateway", "http://pusher:s3cr3t/p@ss@127.0.0.1:9",
        "--pushgateway-auth-file", str(tmp_path / "missing"),
    )  # fmt: skip
    assert rc == 2, printed
    assert "--pushgateway-auth-file" in printed and "cannot be read" in printed
    assert "warning: --pushgateway http://***@127.0.0.1:9 carries credentials" in printed
    assert SECRET not in printed and "p@ss" not in printed, printed

    rc, printed = run(
        capsys, *base, "--pushgateway", "127.0.0.1:9", "--pushgateway-auth-file", str(secret_file)
    )
    assert rc == 2, printed
    assert "expected user:password" in printed
    assert SECRET not in printed, printed
