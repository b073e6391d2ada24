"""Where each call's logs are on AWS, and reading them back from CloudWatch Logs.

On Lambda an invocation logs to its function's log group (``/aws/lambda/<function>``), in the log
stream of the execution environment that ran it, between Lambda's ``START RequestId: <id>`` and
``REPORT RequestId: <id>`` lines. The runtime records that place (:class:`LogLocation`) with each
call's status (``CallFuture.logs_location``) and in its invocation's start marker, so that the
error of a lost or timed-out call names it. It also prints one line per invocation
(:func:`announcement`), which is how ``lambdamap logs JOB [CALL]`` finds a job's invocations in
the log group after the job's own data is gone::

    $ lambdamap logs 3f2a9c... 17          # the invocation(s) that ran call 17, every attempt
    $ lambdamap logs 3f2a9c... --since 3d   # every invocation of the job in the last 3 days

Reading needs ``logs:FilterLogEvents`` and ``logs:GetLogEvents`` on the function's log group:
permissions of the user who reads, not of the function (docs/aws.md). The local backend has no
CloudWatch: there, ``future.stdout``, ``future.stderr`` and ``future.logs`` hold what a call
printed and logged.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator

#: How far before an invocation's own line the reader starts looking for Lambda's START line.
START_MARGIN_MS = 60_000

_ANNOUNCED = re.compile(r"lambdamap: job (?P<job>\S+) invocation (?P<invocation>\S+) attempt "
                        r"(?P<attempt>\d+) request (?P<request>\S+) calls (?P<calls>\S+)")


@dataclass(frozen=True)
class LogLocation:
    """Where one invocation's log events are: CloudWatch log group, log stream and request id."""

    group: str
    stream: str
    request_id: str

    @classmethod
    def of_context(cls, context: Any) -> LogLocation | None:
        """The location Lambda's context object gives (None off Lambda, e.g. local workers)."""
        group = getattr(context, "log_group_name", None)
        stream = getattr(context, "log_stream_name", None)
        request = getattr(context, "aws_request_id", None)
        if not (group and stream and request):
            return None
        return cls(str(group), str(stream), str(request))

    @classmethod
    def of(cls, data: dict | None) -> LogLocation | None:
        """From its JSON form (a status's ``log_location``); None if there is none."""
        if not data:
            return None
        return cls(data["group"], data["stream"], data["request_id"])

    def to_json(self) -> dict:
        """The JSON form kept in statuses and start markers."""
        return {"group": self.group, "stream": self.stream, "request_id": self.request_id}

    def describe(self) -> str:
        """``CloudWatch log group G, stream S, request id R`` (for messages)."""
        return (f"CloudWatch log group {self.group}, stream {self.stream}, "
                f"request id {self.request_id}")

    def events(self, client=None, *, since: float | None = None) -> list[dict]:
        """This invocation's log events (``timestamp`` in ms, ``message``), Lambda's START to
        REPORT lines; ``since`` (epoch seconds) is a time at or before its start, if known."""
        client = client or logs_client()
        start_ms = None if since is None else int(since * 1000) - START_MARGIN_MS
        return invocation_events(client, self, start_ms)


def announcement(job_id: str, invocation: str, attempt: int, request_id: str,
                 calls: list[int]) -> str:
    """The line the runtime prints as an invocation begins (see :func:`find_invocations`)."""
    return (f"lambdamap: job {job_id} invocation {invocation or '-'} attempt {attempt} "
            f"request {request_id} calls {_ranges(calls)}")


@dataclass(frozen=True)
class InvocationLogs:
    """One invocation of a job found in the logs, and its events (once read)."""

    job_id: str
    invocation: str
    attempt: int
    calls: tuple[int, ...]
    location: LogLocation
    timestamp: int  # ms: when it began
    events: tuple[dict, ...] = ()


def find_invocations(client, group: str, job_id: str, call_id: int | None = None,
                     since: float | None = None) -> list[InvocationLogs]:
    """The invocations of ``job_id`` (that ran ``call_id``, if given) in log group ``group``,
    in the order they began, from the lines the runtime printed (``since``: epoch seconds)."""
    kwargs: dict = {"logGroupName": group, "filterPattern": f'"{job_id}"'}
    if since is not None:
        kwargs["startTime"] = int(since * 1000)
    found = []
    for page in client.get_paginator("filter_log_events").paginate(**kwargs):
        for event in page.get("events", ()):
            match = _ANNOUNCED.search(event["message"])
            if match is None or match["job"] != job_id:
                continue
            calls = _parse_ranges(match["calls"])
            if call_id is not None and call_id not in calls:
                continue
            found.append(InvocationLogs(
                job_id=job_id, invocation=match["invocation"], attempt=int(match["attempt"]),
                calls=tuple(calls), location=LogLocation(group, event["logStreamName"],
                                                         match["request"]),
                timestamp=int(event["timestamp"])))
    return sorted(found, key=lambda inv: inv.timestamp)


def read_job(job_id: str, call_id: int | None = None, *, group: str, since: float | None = None,
             client=None) -> list[InvocationLogs]:
    """Every invocation of a job (or of one of its calls) with its log events, in order."""
    client = client or logs_client()
    out = []
    for inv in find_invocations(client, group, job_id, call_id, since):
        events = invocation_events(client, inv.location, inv.timestamp - START_MARGIN_MS)
        out.append(InvocationLogs(inv.job_id, inv.invocation, inv.attempt, inv.calls,
                                  inv.location, inv.timestamp, tuple(events)))
    return out


def invocation_events(client, location: LogLocation, start_ms: int | None = None) -> list[dict]:
    """The events of one request in its log stream: from Lambda's START line for it (or the
    first event read, if START lies before ``start_ms``) to its REPORT line (or the stream's end)."""
    events: list[dict] = []
    inside = False
    for event in _stream(client, location, start_ms):
        mark = _mark(event["message"], location.request_id)
        if mark == "start":
            inside, events = True, []
        if inside or mark is not None or location.request_id in event["message"]:
            inside = True
            events.append({"timestamp": event["timestamp"], "message": event["message"]})
        if mark == "report":
            break
    return events


def logs_client(settings=None):
    """A CloudWatch Logs client for the deployment's region (and ``logs_endpoint_url``)."""
    import boto3

    from .config import Settings

    settings = settings or Settings.resolve()
    return boto3.session.Session().client("logs", region_name=settings.region,
                                          endpoint_url=settings.logs_endpoint_url)


def function_log_group(function_name: str) -> str:
    """Lambda's log group of a function (what ``lambdamap deploy`` lets it write to)."""
    return f"/aws/lambda/{function_name}"


def parse_since(text: str) -> float:
    """``"90m"``, ``"24h"``, ``"3d"`` (or plain seconds) ago, as epoch seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ValueError(f"--since takes a duration such as 90m, 24h or 3d, not {text!r}")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return time.time() - float(match[1]) * scale


def format_event(event: dict) -> str:
    """One log event as a line: UTC time to the millisecond, then the message."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["timestamp"] / 1000))
    return f"{stamp}.{event['timestamp'] % 1000:03d}Z {event['message'].rstrip()}"


def _stream(client, location: LogLocation, start_ms: int | None) -> Iterator[dict]:
    kwargs: dict = {"logGroupName": location.group, "logStreamName": location.stream,
                    "startFromHead": True}
    if start_ms is not None:
        kwargs["startTime"] = max(int(start_ms), 0)
    token = None
    while True:
        page = client.get_log_events(**kwargs, **({"nextToken": token} if token else {}))
        yield from page.get("events", ())
        # The forward token repeats at the end of the stream.
        if not page.get("events") or page.get("nextForwardToken") in (None, token):
            return
        token = page["nextForwardToken"]


def _mark(message: str, request_id: str) -> str | None:
    """``"start"``/``"report"`` for Lambda's START/REPORT line of ``request_id`` (text or JSON
    log format), else None."""
    text = message.lstrip()
    for word, mark in (("START", "start"), ("REPORT", "report")):
        if text.startswith(f"{word} RequestId: {request_id}"):
            return mark
    if text.startswith("{") and request_id in text:
        try:
            record = json.loads(text)
        except ValueError:
            return None
        if (record.get("record") or {}).get("requestId") == request_id:
            return {"platform.start": "start", "platform.report": "report"}.get(record.get("type"))
    return None


def format_calls(calls) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (an invocation's calls, compactly)."""
    return _ranges(list(calls))


def _ranges(calls: list[int]) -> str:
    parts, calls = [], sorted(calls)
    i = 0
    while i < len(calls):
        j = i
        while j + 1 < len(calls) and calls[j + 1] == calls[j] + 1:
            j += 1
        parts.append(str(calls[i]) if i == j else f"{calls[i]}-{calls[j]}")
        i = j + 1
    return ",".join(parts) or "-"


def _parse_ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if part in ("", "-"):
            continue
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out
