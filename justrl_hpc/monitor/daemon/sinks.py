"""Where alerts go: a log line, alerts.jsonl in the run folder, a Slack-compatible webhook, e-mail.

Each sink has `send(alert) -> None` and raises on failure. The Dispatcher gives every sink its own queue
and worker thread, retries with exponential back-off, and reports failures as one log line; so a sink
that is down or hangs never blocks the other sinks or the poll loop. Secrets (webhook URL, SMTP password,
dead-man URL) come only from the environment and are scrubbed from every line this module logs.

Environment (see monitor/env.example):
  JUSTRL_ALERT_WEBHOOK_URL   Slack-compatible incoming webhook ({"text": …} POST)
  JUSTRL_SMTP_HOST, JUSTRL_SMTP_PORT (587 → STARTTLS, 465 → TLS), JUSTRL_SMTP_USER, JUSTRL_SMTP_PASSWORD,
  JUSTRL_SMTP_FROM, JUSTRL_SMTP_STARTTLS (1/0), JUSTRL_ALERT_EMAIL_TO (comma-separated)
  JUSTRL_DEADMAN_URL         pinged (GET) once per monitor cycle; its silence is the external alarm
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Protocol

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.monitor.findings import Alert, Finding

log = logging.getLogger("justrl_hpc.monitor.daemon.sinks")


class Sink(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...

    def secrets(self) -> tuple[str, ...]: ...


class SinkError(Exception):
    """A delivery failed; the message is safe to log (it never holds a URL or a password)."""


def redact(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class LogSink:
    """One line per alert (Alert.one_line()) on stderr, or on a logger if given."""

    name = "log"

    def __init__(self, stream: IO[str] | None = None, logger: logging.Logger | None = None) -> None:
        self._stream = stream
        self._logger = logger

    def send(self, alert: Alert) -> None:
        line = alert.one_line()
        if self._logger is not None:
            level = {"critical": logging.CRITICAL, "warn": logging.WARNING}.get(alert.severity, logging.INFO)
            self._logger.log(level, line)
            return
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def secrets(self) -> tuple[str, ...]:
        return ()


class JsonlSink:
    """Every alert, firing and resolved, appended to RUN/alerts.jsonl and fsynced (the durable record)."""

    name = "jsonl"

    def __init__(self, run_dir: Path) -> None:
        self.path = RunPaths(run_dir).alerts
        self._lock = threading.Lock()

    def send(self, alert: Alert) -> None:
        data = (alert.to_json() + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def secrets(self) -> tuple[str, ...]:
        return ()


class WebhookSink:
    """POST {"text": one line} as JSON (Slack, Mattermost, Rocket.Chat, Teams workflows accept it)."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._url = url
        self.timeout = timeout

    def send(self, alert: Alert) -> None:
        body = json.dumps({"text": alert.one_line()}).encode()
        req = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "justrl-monitor"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status = resp.status
                resp.read(1024)
        except urllib.error.HTTPError as exc:
            raise SinkError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise SinkError(f"cannot reach the webhook: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise SinkError(f"no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise SinkError(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        if not 200 <= status < 300:
            raise SinkError(f"HTTP {status}")

    def secrets(self) -> tuple[str, ...]:
        return (self._url,)


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(reason, OSError):
        return reason.strerror or type(reason).__name__
    return str(reason)


@dataclass
class EmailSettings:
    host: str
    port: int
    sender: str
    to: list[str]
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    tls: bool = False  # implicit TLS (port 465)
    timeout: float = 20.0


class EmailSink:
    name = "email"

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings

    def send(self, alert: Alert) -> None:
        import smtplib
        import ssl

        st = self.settings
        where = "".join(f" {k}={v}" for k, v in (("node", alert.node), ("gpu", alert.gpu)) if v is not None)
        msg = EmailMessage()
        msg["Subject"] = f"[{alert.severity}] {alert.run}: {alert.rule} {alert.state}{where}"
        msg["From"] = st.sender
        msg["To"] = ", ".join(st.to)
        msg.set_content(alert.one_line() + "\n\n" + json.dumps(alert.to_dict(), indent=2, default=str) + "\n")
        try:
            if st.tls:
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    st.host, st.port, timeout=st.timeout, context=ssl.create_default_context()
                )
            else:
                client = smtplib.SMTP(st.host, st.port, timeout=st.timeout)
            with client:
                if st.starttls:
                    client.starttls(context=ssl.create_default_context())
                if st.user:
                    client.login(st.user, st.password or "")
                client.send_message(msg)
        except smtplib.SMTPException as exc:
            raise SinkError(f"SMTP: {type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise SinkError(f"SMTP: no answer within {st.timeout:g} s") from None
        except OSError as exc:
            raise SinkError(f"SMTP: {type(exc).__name__}: {exc.strerror or exc}") from None

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.settings.password,) if s)


# -- the dispatcher -------------------------------------------------------------------------------------------


@dataclass
class SinkStatus:
    name: str
    delivered: int = 0
    attempts_failed: int = 0
    given_up: int = 0
    dropped: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_ok: float | None = None
    failing: bool = False


class _Worker:
    def __init__(self, sink: Sink, dispatcher: Dispatcher) -> None:
        self.sink = sink
        self.d = dispatcher
        self.queue: queue.Queue[Alert | None] = queue.Queue(maxsize=dispatcher.queue_size)
        self.status = SinkStatus(name=sink.name)
        self.lock = threading.Lock()
        self.busy = False
        self.thread = threading.Thread(target=self._run, name=f"alert-sink-{sink.name}", daemon=True)
        self.thread.start()

    def put(self, alert: Alert) -> None:
        while True:
            try:
                self.queue.put_nowait(alert)
                return
            except queue.Full:
                # A sink that has been down for long: keep the newest alerts, count what is dropped.
                try:
                    self.queue.get_nowait()
                    self.queue.task_done()
                except queue.Empty:
                    pass
                with self.lock:
                    self.status.dropped += 1
                self.d._log.warning("alert sink %s queue full: dropped the oldest alert", self.sink.name)

    def _run(self) -> None:
        while True:
            alert = self.queue.get()
            try:
                if alert is None:
                    return
                self.busy = True
                self._deliver(alert)
            finally:
                self.busy = False
                self.queue.task_done()

    def _deliver(self, alert: Alert) -> None:
        d = self.d
        attempts = d.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self.sink.send(alert)
            except Exception as exc:  # any failure of one sink stays inside its worker
                err = redact(
                    f"{type(exc).__name__}: {exc}" if not isinstance(exc, SinkError) else str(exc),
                    self._secrets(),
                )
                with self.lock:
                    self.status.attempts_failed += 1
                    self.status.consecutive_failures += 1
                    self.status.last_error = err
                    self.status.failing = self.status.consecutive_failures >= d.failing_after
                where = f"run={alert.run} rule={alert.rule} key={alert.key} state={alert.state}"
                if attempt < attempts and not d._stop.is_set():
                    delay = min(d.backoff_max_s, d.backoff_s * 2 ** (attempt - 1))
                    d._log.warning(
                        "alert sink %s failed (attempt %d/%d) %s: %s; retrying in %.1fs",
                        self.sink.name,
                        attempt,
                        attempts,
                        where,
                        err,
                        delay,
                    )
                    if d._stop.wait(delay):
                        break
                    continue
                d._log.error(
                    "alert sink %s gave up after %d attempts %s: %s", self.sink.name, attempt, where, err
                )
                with self.lock:
                    self.status.given_up += 1
                return
            with self.lock:
                self.status.delivered += 1
                self.status.consecutive_failures = 0
                self.status.failing = False
                self.status.last_ok = time.time()
            return
        # Only reached when close() interrupted a back-off: the alert stays in alerts.jsonl, not here.
        d._log.error(
            "alert sink %s gave up: monitor stopping run=%s key=%s", self.sink.name, alert.run, alert.key
        )
        with self.lock:
            self.status.given_up += 1

    def _secrets(self) -> tuple[str, ...]:
        try:
            return tuple(self.sink.secrets())
        except Exception:
            return ()


class Dispatcher:
    """Delivers each alert to every sink, each in its own worker with retry and back-off; dispatch()
    returns at once."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        retries: int = 4,
        backoff_s: float = 2.0,
        backoff_max_s: float = 120.0,
        failing_after: int = 3,
        queue_size: int = 1000,
        logger: logging.Logger | None = None,
    ) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.failing_after = failing_after
        self.queue_size = queue_size
        self._log = logger or log
        self._stop = threading.Event()
        self._workers = [_Worker(s, self) for s in sinks]

    @property
    def sinks(self) -> list[Sink]:
        return [w.sink for w in self._workers]

    def dispatch(self, alert: Alert) -> None:
        for w in self._workers:
            w.put(alert)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued alert was delivered or given up; False if the timeout came first."""
        deadline = time.monotonic() + timeout
        for w in self._workers:
            while w.queue.unfinished_tasks:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers: retries waiting on back-off give up now; a send in flight gets `timeout`."""
        self._stop.set()
        for w in self._workers:
            try:
                w.queue.put_nowait(None)
            except queue.Full:
                pass
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))

    def status(self) -> list[SinkStatus]:
        out = []
        for w in self._workers:
            with w.lock:
                out.append(SinkStatus(**vars(w.status)))
        return out

    def findings(self) -> list[Finding]:
        """A `sink-failing` finding per sink that keeps failing, for the engine to raise and show like any
        other (it cannot reach that sink, but the others and the TUI still see it)."""
        out = []
        for st in self.status():
            if st.failing:
                out.append(
                    Finding(
                        rule="sink-failing",
                        severity="warn",
                        key=f"sink-failing:{st.name}",
                        metric="consecutive_failures",
                        value=st.consecutive_failures,
                        threshold=self.failing_after,
                        message=f"alert sink {st.name} failing: {st.consecutive_failures} attempts in "
                        f"a row, last: {st.last_error}",
                    )
                )
        return out


# -- dead-man switch ------------------------------------------------------------------------------------------


class DeadMan:
    """Pings an external heartbeat URL (healthchecks.io-style GET) once per monitor cycle, in the
    background; when the monitor dies or hangs the pings stop and the outside service raises the alarm."""

    def __init__(self, url: str, timeout: float = 10.0, logger: logging.Logger | None = None) -> None:
        self._url = url
        self.timeout = timeout
        self._log = logger or log
        self._pending: queue.Queue[bool] = queue.Queue(maxsize=1)
        self.ok: bool | None = None
        self.pings = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="deadman", daemon=True)
        self._thread.start()

    def ping(self) -> None:
        try:
            self._pending.put_nowait(True)
        except queue.Full:
            pass  # a ping is already waiting; one is enough

    def _run(self) -> None:
        while self._pending.get():
            try:
                req = urllib.request.Request(self._url, headers={"User-Agent": "justrl-monitor"})
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read(256)
            except Exception as exc:
                self.failures += 1
                if self.ok is not False:  # one line per streak of failures, not one per cycle
                    self._log.warning("dead-man ping failed: %s", redact(_describe(exc), (self._url,)))
                self.ok = False
            else:
                self.pings += 1
                if self.ok is False:
                    self._log.info("dead-man ping works again")
                self.ok = True
            finally:
                self._pending.task_done()

    def flush(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        try:
            self._pending.put(False, timeout=1.0)
        except queue.Full:
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach it: {_reason(exc.reason)}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return type(exc).__name__


# -- configuration from the environment ---------------------------------------------------------------------


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    url = env.get(name, "").strip()
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        # The value itself is a secret: say what is wrong without echoing it.
        raise UserError("must start with http:// or https://", name)
    return url


def email_settings(env: Mapping[str, str]) -> EmailSettings | None:
    host = env.get("JUSTRL_SMTP_HOST", "").strip()
    if not host:
        return None
    to = [a.strip() for a in env.get("JUSTRL_ALERT_EMAIL_TO", "").split(",") if a.strip()]
    if not to:
        raise UserError(
            "is empty but JUSTRL_SMTP_HOST is set; give the recipients, comma-separated",
            "JUSTRL_ALERT_EMAIL_TO",
        )
    if any("@" not in a for a in to):
        raise UserError(
            "holds an address without '@'; give e-mail addresses, comma-separated", "JUSTRL_ALERT_EMAIL_TO"
        )
    raw_port = env.get("JUSTRL_SMTP_PORT", "").strip() or "587"
    try:
        port = int(raw_port)
    except ValueError:
        raise UserError(f"must be a port number, got {raw_port!r}", "JUSTRL_SMTP_PORT") from None
    if not 0 < port < 65536:
        raise UserError(f"must be 1–65535, got {port}", "JUSTRL_SMTP_PORT")
    flag = env.get("JUSTRL_SMTP_STARTTLS", "").strip().lower()
    if flag and flag not in ("1", "0", "true", "false", "yes", "no"):
        raise UserError(f"must be 1 or 0, got {flag!r}", "JUSTRL_SMTP_STARTTLS")
    starttls = flag in ("1", "true", "yes") if flag else port == 587
    user = env.get("JUSTRL_SMTP_USER", "").strip() or None
    password = env.get("JUSTRL_SMTP_PASSWORD") or None
    if password and not user:
        raise UserError("is empty but JUSTRL_SMTP_PASSWORD is set; give the SMTP login", "JUSTRL_SMTP_USER")
    sender = (
        env.get("JUSTRL_SMTP_FROM", "").strip()
        or (user if user and "@" in user else None)
        or (f"justrl-monitor@{socket.getfqdn()}")
    )
    return EmailSettings(
        host=host,
        port=port,
        sender=sender,
        to=to,
        user=user,
        password=password,
        starttls=starttls and port != 465,
        tls=port == 465,
    )


def build_sinks(run_dir: Path, env: Mapping[str, str] | None = None) -> list[Sink]:
    """The log line and alerts.jsonl always; the webhook and e-mail when their variables are set.
    A malformed variable is a UserError naming it (its value is never echoed)."""
    env = os.environ if env is None else env
    sinks: list[Sink] = [LogSink(), JsonlSink(run_dir)]
    url = _http_url(env, "JUSTRL_ALERT_WEBHOOK_URL")
    if url:
        sinks.append(WebhookSink(url))
    mail = email_settings(env)
    if mail is not None:
        sinks.append(EmailSink(mail))
    return sinks


def build_deadman(env: Mapping[str, str] | None = None) -> DeadMan | None:
    env = os.environ if env is None else env
    url = _http_url(env, "JUSTRL_DEADMAN_URL")
    return DeadMan(url) if url else None
