"""Alert sinks against real servers on 127.0.0.1 (http.server for the webhook and dead-man, aiosmtpd for
e-mail), the dispatcher's retry/back-off and isolation, secrets kept out of every log, and the monitor's
TensorBoard scalars read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from helpers import Hook

from justrl_hpc.core.errors import UserError
from justrl_hpc.monitor.agent.sampler import samples_from_recording
from justrl_hpc.monitor.daemon.scalars import MonitorScalarWriter
from justrl_hpc.monitor.daemon.sinks import (
    DeadMan,
    Dispatcher,
    EmailSettings,
    EmailSink,
    JsonlSink,
    LogSink,
    SinkError,
    WebhookSink,
    build_deadman,
    build_sinks,
)
from justrl_hpc.monitor.findings import Alert, Finding

RECORDING = Path(__file__).resolve().parents[1] / "data" / "nvml_a800_8gpu.jsonl"


def make_alert(key: str = "G1-xid:n1:3:79") -> Alert:
    f = Finding(
        rule="G1-xid",
        severity="critical",
        key=key,
        metric="xid",
        value=79,
        threshold=None,
        message="XID 79 (fallen off the bus) on n1 GPU 3",
        node="n1",
        gpu=3,
    )
    return Alert.from_finding("justrl-test", f)


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a real HTTP server ------------------------------------------------------------------------------------------


# -- simple sinks ----------------------------------------------------------------------------------------------


def test_log_sink_writes_one_line() -> None:
    buf = io.StringIO()
    LogSink(stream=buf).send(make_alert())
    assert buf.getvalue() == make_alert().one_line() + "\n"
    assert buf.getvalue().startswith("[critical] justrl-test: G1-xid firing node=n1 gpu=3:")


def test_jsonl_sink_appends(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path)
    sink.send(make_alert("a"))
    sink.send(make_alert("b"))
    rows = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["a", "b"] and rows[0]["gpu"] == 3 and rows[0]["state"] == "firing"


# -- webhook ----------------------------------------------------------------------------------------------------


def test_webhook_500_then_ok_is_retried_and_delivered_once(
    http: tuple[str, Hook], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, hook = http
    hook.statuses = [500]
    d = Dispatcher(
        [WebhookSink(url + "/hook"), JsonlSink(tmp_path)], retries=3, backoff_s=0.05, failing_after=1
    )
    with caplog.at_level(logging.WARNING, logger="justrl_hpc.monitor.daemon.sinks"):
        d.dispatch(make_alert())
        assert d.flush(20)
    d.close()
    assert len(hook.requests) == 2
    (method, path, body) = hook.requests[1]
    assert method == "POST" and path == "/hook" and json.loads(body) == {"text": make_alert().one_line()}
    web = next(s for s in d.status() if s.name == "webhook")
    assert (web.delivered, web.attempts_failed, web.given_up, web.failing) == (1, 1, 0, False)
    warn = [r.getMessage() for r in caplog.records]
    assert (
        len(warn) == 1
        and "attempt 1/4" in warn[0]
        and "HTTP 500" in warn[0]
        and "retrying in 0.1s" in warn[0]
    )
    assert d.findings() == []


def test_webhook_down_gives_up_and_raises_sink_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens: connection refused
    d = Dispatcher(
        [WebhookSink(f"http://127.0.0.1:{port}/x"), JsonlSink(tmp_path)],
        retries=2,
        backoff_s=0.01,
        failing_after=3,
    )
    with caplog.at_level(logging.WARNING, logger="justrl_hpc.monitor.daemon.sinks"):
        d.dispatch(make_alert())
        assert d.flush(20)
    d.close()
    web, jsonl = d.status()
    assert (web.delivered, web.attempts_failed, web.given_up, web.failing) == (0, 3, 1, True)
    assert "Connection refused" in (web.last_error or "")
    assert jsonl.delivered == 1, "the other sink was not held up"
    (f,) = d.findings()
    assert (f.rule, f.key, f.severity, f.value) == ("sink-failing", "sink-failing:webhook", "warn", 3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "gave up after 3 attempts" in lines[-1] and "key=G1-xid:n1:3:79" in lines[-1]


def test_hanging_webhook_blocks_neither_caller_nor_other_sinks(
    http: tuple[str, Hook], tmp_path: Path
) -> None:
    url, hook = http
    hook.blocking = True
    d = Dispatcher([WebhookSink(url, timeout=0.5), JsonlSink(tmp_path)], retries=0)
    d.dispatch(make_alert())  # returns at once although the server holds the request
    assert hook.entered.wait(10)
    wait_for(lambda: d.status()[1].delivered == 1)
    assert not hook.block.is_set() and d.status()[0].delivered == 0
    assert (tmp_path / "alerts.jsonl").read_text().count("\n") == 1
    wait_for(lambda: d.status()[0].given_up == 1)
    assert d.status()[0].last_error == "no answer within 0.5 s"
    hook.block.set()
    d.close()


def test_webhook_sink_raises_on_http_error(http: tuple[str, Hook]) -> None:
    url, hook = http
    hook.statuses = [404]
    with pytest.raises(SinkError, match="HTTP 404"):
        WebhookSink(url).send(make_alert())


# -- e-mail against a real SMTP server -------------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp(request: pytest.FixtureRequest) -> Iterator[tuple[int, Mailbox, dict[str, Any]]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    box = Mailbox()
    opts: dict[str, Any] = dict(getattr(request, "param", {}))

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            box.logins.append((data.login, data.password))
            ok = data.login == b"monitor" and data.password == b"right-password"
            return AuthResult(success=ok, handled=False)  # not handled: the server answers 235/535 itself
        return AuthResult(success=False, handled=False)

    port = free_port()
    kwargs: dict[str, Any] = {"authenticator": authenticator, "auth_require_tls": False}
    kwargs.update(opts)
    controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port, box, opts
    finally:
        controller.stop()


def test_email_is_delivered_to_every_recipient(smtp: tuple[int, Mailbox, dict[str, Any]]) -> None:
    port, box, _ = smtp
    EmailSink(
        EmailSettings(
            host="127.0.0.1",
            port=port,
            sender="monitor@cluster.example",
            to=["a@example.org", "b@example.org"],
        )
    ).send(make_alert())
    (env,) = box.messages
    assert env.rcpt_tos == ["a@example.org", "b@example.org"] and env.mail_from == "monitor@cluster.example"
    msg = message_from_bytes(env.original_content)
    assert msg["Subject"] == "[critical] justrl-test: G1-xid firing node=n1 gpu=3"
    body = msg.get_payload(decode=True).decode()
    assert make_alert().one_line() in body and '"key": "G1-xid:n1:3:79"' in body


def test_email_from_environment_with_login(smtp: tuple[int, Mailbox, dict[str, Any]], tmp_path: Path) -> None:
    port, box, _ = smtp
    env = {
        "JUSTRL_SMTP_HOST": "127.0.0.1",
        "JUSTRL_SMTP_PORT": str(port),
        "JUSTRL_SMTP_USER": "monitor",
        "JUSTRL_SMTP_PASSWORD": "right-password",
        "JUSTRL_ALERT_EMAIL_TO": "ops@example.org",
        "JUSTRL_SMTP_FROM": "justrl@example.org",
        "JUSTRL_SMTP_STARTTLS": "0",
    }
    sinks = build_sinks(tmp_path, env)
    assert [s.name for s in sinks] == ["log", "jsonl", "email"]
    sinks[2].send(make_alert())
    assert box.logins == [(b"monitor", b"right-password")] and box.messages[0].rcpt_tos == ["ops@example.org"]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed: cannot make a certificate for the STARTTLS server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_email_with_starttls(tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from aiosmtpd.controller import Controller

    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    box = Mailbox()
    port = free_port()
    controller = Controller(
        box, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True
    )
    controller.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client verifies the server against this CA
    try:
        EmailSink(
            EmailSettings(
                host="127.0.0.1", port=port, sender="m@example.org", to=["ops@example.org"], starttls=True
            )
        ).send(make_alert())
        with pytest.raises(SinkError, match="SMTP"):  # the server refuses mail before STARTTLS
            EmailSink(
                EmailSettings(host="127.0.0.1", port=port, sender="m@example.org", to=["ops@example.org"])
            ).send(make_alert())
    finally:
        controller.stop()
    assert len(box.messages) == 1


def test_secrets_never_reach_any_log(
    smtp: tuple[int, Mailbox, dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, box, _ = smtp
    token, password, ping = "T0KEN-s3cret-9f8e7d", "wr0ng-pa55word-77", "deadman-k3y-123abc"
    env = {
        "JUSTRL_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/services/{token}",
        "JUSTRL_SMTP_HOST": "127.0.0.1",
        "JUSTRL_SMTP_PORT": str(port),
        "JUSTRL_SMTP_USER": "monitor",
        "JUSTRL_SMTP_PASSWORD": password,
        "JUSTRL_ALERT_EMAIL_TO": "ops@example.org",
        "JUSTRL_DEADMAN_URL": f"http://127.0.0.1:{free_port()}/ping/{ping}",
    }
    with caplog.at_level(logging.DEBUG):
        d = Dispatcher(build_sinks(tmp_path, env), retries=1, backoff_s=0.01, failing_after=2)
        d.dispatch(make_alert())
        assert d.flush(30)
        dm = build_deadman(env)
        assert dm is not None
        dm.ping()
        dm.flush()
        dm.close()
        d.close()
    status = {s.name: s for s in d.status()}
    assert (
        status["webhook"].given_up == 1 and status["email"].given_up == 1 and status["jsonl"].delivered == 1
    )
    assert "SMTPAuthenticationError" in (status["email"].last_error or "")
    assert box.logins and box.logins[0][1] == password.encode(), "the password did reach the server"
    everything = "\n".join(
        [
            caplog.text,
            capsys.readouterr().err,
            (tmp_path / "alerts.jsonl").read_text(),
            json.dumps([vars(s) for s in d.status()]),
            json.dumps([vars(f) for f in d.findings()]),
        ]
    )
    assert "sink-failing:webhook" in everything and "dead-man ping failed" in everything
    for secret in (token, password, ping):
        assert secret not in everything


# -- configuration --------------------------------------------------------------------------------------------------


def test_build_sinks_defaults_and_bad_values(tmp_path: Path) -> None:
    assert [s.name for s in build_sinks(tmp_path, {})] == ["log", "jsonl"]
    assert build_deadman({}) is None
    env = {
        "JUSTRL_ALERT_WEBHOOK_URL": "https://hooks.example/T/B/x",
        "JUSTRL_SMTP_HOST": "smtp.example",
        "JUSTRL_ALERT_EMAIL_TO": "a@x.org, b@x.org",
    }
    sinks = build_sinks(tmp_path, env)
    assert [s.name for s in sinks] == ["log", "jsonl", "webhook", "email"]
    mail = sinks[3]
    assert isinstance(mail, EmailSink)
    assert (mail.settings.port, mail.settings.starttls, mail.settings.to) == (
        587,
        True,
        ["a@x.org", "b@x.org"],
    )
    with pytest.raises(UserError, match="JUSTRL_SMTP_PORT: must be a port number"):
        build_sinks(tmp_path, env | {"JUSTRL_SMTP_PORT": "smtp"})
    with pytest.raises(UserError, match="JUSTRL_ALERT_EMAIL_TO"):
        build_sinks(tmp_path, {"JUSTRL_SMTP_HOST": "smtp.example"})
    with pytest.raises(UserError) as bad:
        build_sinks(tmp_path, {"JUSTRL_ALERT_WEBHOOK_URL": "hooks.example/very-secret"})
    assert "JUSTRL_ALERT_WEBHOOK_URL" in str(bad.value) and "very-secret" not in str(bad.value)


def test_deadman_pings_and_reports_a_failure_streak_once(
    http: tuple[str, Hook], caplog: pytest.LogCaptureFixture
) -> None:
    url, hook = http
    dm = DeadMan(url + "/ping/abc")
    dm.ping()
    dm.flush()
    assert [(m, p) for m, p, _ in hook.requests] == [("GET", "/ping/abc")] and dm.ok is True
    hook.statuses = [503, 503]
    with caplog.at_level(logging.INFO, logger="justrl_hpc.monitor.daemon.sinks"):
        for _ in range(3):
            dm.ping()
            dm.flush()
    dm.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["dead-man ping failed: HTTP 503 Service Unavailable", "dead-man ping works again"]
    assert (dm.pings, dm.failures) == (2, 2)


# -- TensorBoard ---------------------------------------------------------------------------------------------------


def test_tbwriter_read_back_with_event_accumulator(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    n1 = samples_from_recording(RECORDING, host="n1", start=1_800_000_000.0, limit=8)
    n2 = samples_from_recording(RECORDING, host="n2", start=1_800_000_000.0, limit=8)
    for s in n1 + n2:
        s["host_stats"] = {"ram_used_bytes": 512 << 30, "ram_total_bytes": 2048 << 30, "cpu_percent": 12.5}
    w = MonitorScalarWriter(tmp_path)
    expected = w.scalars({"n1": n1[:4], "n2": n2[:4]}, {"critical": 1, "warn": 2, "info": 0})
    assert w.write({"n1": n1[:4], "n2": n2[:4]}, {"critical": 1, "warn": 2, "info": 0}, 10) == len(expected)
    w.write({"n1": n1[4:], "n2": n2[4:]}, {"critical": 0, "warn": 1, "info": 0}, 1_800_000_100.0)
    w.close()
    assert (tmp_path / "tensorboard" / "monitor").is_dir()
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "monitor"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "gpu_temperature_c/n1/gpu0",
        "gpu_utilization_pct/n2/gpu7",
        "gpu_memory_used_gib/n1/gpu3",
        "gpu_power_w/n2/gpu5",
        "host_ram_used_pct/n1",
        "alerts_firing/critical",
    } <= tags
    assert len(tags) == 2 * 8 * 4 + 2 * 2 + 3
    temp = acc.Scalars("gpu_temperature_c/n1/gpu0")
    assert [e.step for e in temp] == [10, 1_800_000_100]
    assert temp[0].value == max(
        g["DCGM_FI_DEV_GPU_TEMP"] for s in n1[:4] for g in s["gpus"] if g["index"] == 0
    )
    assert temp[1].wall_time == pytest.approx(1_800_000_100.0)
    assert [e.value for e in acc.Scalars("alerts_firing/warn")] == [2.0, 1.0]
    assert acc.Scalars("host_ram_used_pct/n2")[0].value == pytest.approx(25.0)
    for tag, v in expected.items():
        assert acc.Scalars(tag)[0].value == pytest.approx(v, rel=1e-6), tag
