"""An OpenAI batch at the gateway as it runs: its lines submitted, its cancel, its end.

**Submitting.** A batch whose file passed is submitted by a thread of the gateway process
through :func:`router.batch.submit_batch`, the code ``tierflow batch run`` uses: the lines are
planned, stored a chunk at a time and sent to their tiers at batch priority under the batch
window (``TIERFLOW_BATCH_IN_FLIGHT``), each an ordinary job (routing, gate, tiers, costs) of the
tierflow batch named after the OpenAI batch's id. ``submitted_at`` is set once every line was
read. A gateway that stopped mid-way leaves ``submitted_at`` unset: the next read of the batch
starts a submitter again, which resumes (the lines' idempotency keys make the stored ones be
found, not stored twice). The registry of submitters is the process's own: ``tierflow serve``
is one process; a second gateway on the same database would start a second submitter for a
batch the first is still submitting, which resends its stored, unsent lines (each claimed once,
never run twice) but stores nothing twice.

**Cancelling** stops the submitter before its next line, cancels the tierflow batch's jobs
no attempt runs for (as ``tierflow batch cancel`` does; a running one finishes and is kept),
and once the submitter is gone cancels again what it sent meanwhile. The batch is
``cancelling`` until no job of it is open, then ``cancelled``.

**The end.** A read that finds every line sent and no job open ends the batch
(:func:`tierflow.store.gateway_batches.finish_gateway_batch`, once under the row's lock): the
output file holds a line per succeeded job, the error file one per job that ended without an
answer and per line the submitter refused, both built in memory (about a kilobyte a line).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from router.batch import BatchError, BatchHandle, submit_batch
from schemas.tables import GatewayBatch
from tierflow import store
from tierflow.app.gateway_batch_lines import (
    CUSTOM_ID,
    error_line,
    job_specs,
    jsonl,
    output_line,
    refused_line,
)
from tierflow.store.gateway_batches import (
    batch_results,
    file_content,
    finish_gateway_batch,
    gateway_batch,
    line_counts,
    update_gateway_batch,
)

log = logging.getLogger(__name__)
WINDOW_S = 24 * 3600  # completion_window "24h": the jobs' deadline, from the batch's creation
OPEN = ("validating", "in_progress")

_submitters: dict[str, threading.Event] = {}  # batch id -> its stop flag, in this process
_lock = threading.Lock()


def open_tierflow_batch(batch_id: str) -> str:
    """The tierflow batch a gateway batch's lines go into (named after it); returns its id."""
    batch, _ = store.open_batch(batch_id, None)
    return batch.id


def start_submitter(batch_id: str) -> None:
    """Submit the batch's lines in a thread, unless one of this process already does."""
    with _lock:
        if batch_id in _submitters:
            return
        stop = _submitters[batch_id] = threading.Event()
    thread = threading.Thread(
        target=_submit, args=(batch_id, stop), name=f"submit-{batch_id}", daemon=True
    )
    thread.start()


def submitting(batch_id: str) -> bool:
    """Whether a submitter of this process is sending the batch's lines."""
    with _lock:
        return batch_id in _submitters


def _until(stop: threading.Event, specs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for spec in specs:
        if stop.is_set():
            return
        yield spec


def _submit(batch_id: str, stop: threading.Event) -> None:
    try:
        row = gateway_batch(batch_id, None)
        if row is None or row.submitted_at is not None or row.batch_id is None:
            return
        content = file_content(row.input_file_id, row.daemon) or b""
        specs = job_specs(content, row.daemon, batch_id)
        try:
            done = submit_batch(_until(stop, specs), name=batch_id, deadline_s=WINDOW_S)
            refused = [(e.line, e.reason) for e in done.errors]
        except BatchError as exc:  # cancelled before it started
            refused = [] if stop.is_set() else [(0, str(exc))]
        refusals = [
            {"line": line, "message": message, CUSTOM_ID: _custom_id_at(content, row, line)}
            for line, message in refused
        ]
        update_gateway_batch(batch_id, (), submitted_at="now", refused=refusals or None)
        if stop.is_set():
            BatchHandle(row.batch_id).cancel()  # what was sent after the cancel came
    except Exception:
        log.exception("submitting batch %s failed (the next read resumes it)", batch_id)
    finally:
        with _lock:
            _submitters.pop(batch_id, None)


def _custom_id_at(content: bytes, row: GatewayBatch, line: int) -> str | None:
    """The custom_id of the batch's ``line``-th line (1-based, as submit_batch counts)."""
    for number, spec in enumerate(job_specs(content, row.daemon, row.id), start=1):
        if number == line:
            return str(spec["metadata"][CUSTOM_ID])
    return None


def cancel(row: GatewayBatch) -> None:
    """Cancel the batch (see the module); a batch that already ended is left as it is."""
    if not update_gateway_batch(row.id, OPEN, status="cancelling", cancelling_at="now"):
        return
    with _lock:
        stop = _submitters.get(row.id)
    if stop is not None:
        stop.set()
    if row.batch_id is not None:
        BatchHandle(row.batch_id).cancel()


def refresh(row: GatewayBatch) -> tuple[GatewayBatch, dict[str, int]]:
    """The batch as it is now and its request counts (``total``, ``completed``, ``failed``):
    ended when its time has come (see the module), its submitter restarted when lost."""
    refused = len(row.refused or [])
    if row.status not in ("in_progress", "cancelling") or row.batch_id is None:
        return row, _final_counts(row)
    found = line_counts(row.batch_id)
    counts = {
        "total": row.total,
        "completed": found["succeeded"],
        "failed": found["ended"] + refused,
    }
    if row.submitted_at is None and row.status == "in_progress":
        start_submitter(row.id)  # none here after a restart: resume (a no-op while it runs)
        return row, counts
    if found["open"] or submitting(row.id):
        return row, counts
    status = "cancelled" if row.status == "cancelling" else "completed"
    store.settle_batch(row.batch_id)  # the tierflow batch ends with it (done or cancelled)
    finish_gateway_batch(row.id, status, _result_files(row), counts)
    ended = gateway_batch(row.id, None)
    return (ended or row), counts


def _final_counts(row: GatewayBatch) -> dict[str, int]:
    return {"total": row.total, "completed": row.completed or 0, "failed": row.failed or 0}


def _result_files(row: GatewayBatch) -> dict[str, tuple[str, bytes]]:
    """The output and error files of an ended batch (only those with a line)."""
    output: list[bytes] = []
    errors: list[bytes] = []
    assert row.batch_id is not None
    for result, metadata in batch_results(row.batch_id):
        if result.ok:
            output.append(jsonl(output_line(result, metadata)))
        else:
            errors.append(jsonl(error_line(result, metadata)))
    errors += [jsonl(refused_line(r)) for r in row.refused or []]
    files = {}
    if output:
        files["output_file_id"] = (f"{row.id}_output.jsonl", b"".join(output))
    if errors:
        files["error_file_id"] = (f"{row.id}_error.jsonl", b"".join(errors))
    return files
