"""Run directories on any path :mod:`etils.epath` opens: a local folder or ``gs://bucket/dir``.

Every file of a run (config, checkpoints, metrics, events, scores, study records and report) is
reached through ``epath.Path``, never ``pathlib``: ``pathlib.Path("gs://b/x")`` is the local folder
``./gs:/b/x``. ``gs://`` goes through gcsfs (``import espcn_jax`` sets ``EPATH_USE_TF=false``
unless it is set: epath would otherwise use TensorFlow's GCS client, which cannot be pointed at
an emulator, so nothing would test it); Orbax's arrays go through TensorStore's own GCS driver.

An object store has no append and no rename: an object upload is atomic (a reader sees the old
object or the new one, never part of one), so :func:`write_atomic` uploads in place there and
writes a temporary file and renames it on a local disk.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import uuid

from etils import epath

PROBE_TIMEOUT_S = 90.0  # seconds for the write + delete of a marker in a remote workdir
PROBE_FILE = ".espcn_jax-probe"
CONNECT_TIMEOUT_S = 10.0  # the pre-flight's TCP connect; a slow answer is left to the probe
GCS_ENDPOINT = "https://storage.googleapis.com"
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


class UnreachableError(ValueError):
    """A remote run directory cannot be written (no network, no credentials, no such bucket)."""


def is_local(p: str | os.PathLike) -> bool:
    return "://" not in os.fspath(p)


def write_atomic(target: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``target`` so that a reader never sees a partial file: a local file is written
    next to it and renamed over it; an object is uploaded in one piece."""
    target = epath.Path(target)
    blob = data.encode() if isinstance(data, str) else data
    if not is_local(target):
        target.write_bytes(blob)
        return
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_bytes(blob)
        tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _reason(e: BaseException) -> str:
    """One line: the error's type and first line; a 404 on the upload is a missing bucket."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    reason = f"{type(e).__name__}: {line}"[:300] if line else type(e).__name__
    if isinstance(e, FileNotFoundError):
        reason = f"no such bucket; {reason}"
    return reason


def gcs_endpoint() -> tuple[str, int]:
    """``(host, port)`` gcsfs talks to: ``STORAGE_EMULATOR_HOST`` (``http://host:port`` or
    ``host:port``) where set, else Google's endpoint."""
    url = os.environ.get("STORAGE_EMULATOR_HOST") or GCS_ENDPOINT
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _preflight(workdir: str | os.PathLike, timeout_s: float) -> None:
    """Fails at once where the store's endpoint refuses the connection or its name does not
    resolve: both are definite, and gcsfs would retry them with about 30 s of back-off. Skipped
    for other stores and behind a proxy (the direct connection says nothing there); a connection
    that times out is left to the probe."""
    if not os.fspath(workdir).startswith("gs://") or any(
        os.environ.get(v) for v in PROXY_VARIABLES
    ):
        return
    host, port = gcs_endpoint()
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return
    except ConnectionRefusedError:
        reason = f"Cannot connect to {host}:{port}: connection refused"
    except socket.gaierror as e:
        reason = f"Cannot connect to {host}:{port}: the name does not resolve ({e.strerror})"
    except OSError:  # a timeout or an unreachable route: the probe decides, within its timeout
        return
    raise UnreachableError(f"workdir {os.fspath(workdir)} cannot be reached ({reason})")


class _Silence(logging.Filter):
    """Drops gcsfs' records while probing: it logs a traceback when it runs out of retries, and
    the probe reports that error in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def check_reachable(
    workdir: str | os.PathLike, *, write: bool = True, timeout_s: float | None = None
) -> None:
    """Writes and deletes a marker in a remote ``workdir`` before a run writes anything there
    (``write=False``: asks whether it exists, for a run that is only read).

    :class:`UnreachableError` (one line naming the workdir and the reason) if that fails or takes
    longer than ``timeout_s`` (default :data:`PROBE_TIMEOUT_S`): gcsfs retries a refused
    connection 6 times (about 30 s) and a silent network for much longer, so a refused connection
    or a name that does not resolve is caught first by a plain TCP connect to the endpoint. A local
    workdir is not probed (its errors name it already).
    """
    if is_local(workdir):
        return
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    _preflight(workdir, min(CONNECT_TIMEOUT_S, timeout_s))
    marker = epath.Path(workdir) / f"{PROBE_FILE}-{uuid.uuid4().hex}"
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            if write:
                marker.write_bytes(b"")
                marker.unlink()
            else:
                marker.parent.exists()
            outcome.append(None)
        except BaseException as e:  # reported to the caller's thread
            outcome.append(e)

    # A daemon thread: a probe stuck in the network cannot keep the process alive.
    thread = threading.Thread(target=probe, name="espcn_jax-workdir-probe", daemon=True)
    gcsfs_log, silence = logging.getLogger("gcsfs"), _Silence()
    gcsfs_log.addFilter(silence)
    thread.start()
    thread.join(timeout_s)
    if outcome:  # else the stuck probe may still log; the caller is about to exit
        gcsfs_log.removeFilter(silence)
    if not outcome:
        raise UnreachableError(
            f"workdir {os.fspath(workdir)} cannot be reached: no answer within {timeout_s:g} s"
        )
    if outcome[0] is not None:
        raise UnreachableError(
            f"workdir {os.fspath(workdir)} cannot be reached ({_reason(outcome[0])})"
        )
