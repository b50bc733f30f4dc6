"""ConcurrentWorker: an RQ worker that keeps up to N jobs in flight in one process.

RQ's `Worker` forks a process per job and `SimpleWorker` runs one job at a time. AI calls
spend seconds waiting on the network, so this worker runs each job in a thread of its own
(the handler calls themselves run on the process's shared asyncio loop, see runtime.py) and
dequeues only when a slot is free. Everything else is RQ's: each job gets an Execution in
the started registry, results and failures land in RQ's registries, the worker registers and
heartbeats, and job timeouts hold (TimerDeathPenalty works in any thread). Jobs are read as
JSON (infra/stores.py: RQ_SERIALIZER) unless a caller passes another serializer.

Shutdown: the first SIGTERM/SIGINT stops dequeuing and lets in-flight jobs finish for up to
`shutdown_grace` seconds; jobs still running then (or at a second signal) are handed back:
their requests return to `queued` and their RQ jobs to the front of their queues.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from rq import SimpleWorker
from rq.command import parse_payload
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.timeouts import TimerDeathPenalty
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from executor import defaults, liveness, queues, runtime
from infra.stores import RQ_SERIALIZER


class ConcurrentWorker(SimpleWorker):
    death_penalty_class = TimerDeathPenalty
    queue_class = queues.ExecutorQueue

    def __init__(
        self,
        *args,
        concurrency: int = 64,
        shutdown_grace: float = defaults.SHUTDOWN_GRACE,
        **kwargs,
    ):
        # Before super().__init__, which sets self.execution and may record a state.
        self._local = threading.local()
        self.probe_beat = None  # infra.probe.Beat when a liveness port is served
        self._inflight: dict[str, Job] = {}
        self._beat_at = float("-inf")
        self._suspension_checked_at = float("-inf")
        self._state_lock = threading.Lock()
        self._state_written: str | None = None
        kwargs.setdefault("serializer", RQ_SERIALIZER)  # the queues' JSON, never pickle
        super().__init__(*args, **kwargs)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="job")
        self._inflight_lock = threading.Lock()
        self._force_stop = threading.Event()
        self._cancels: dict[str, threading.Event] = {}
        self._job_ended = threading.Event()  # set whenever a job's thread finishes
        self._stop_signal_at = float("-inf")
        # Successes and their working time since the last beat (see heartbeat).
        self._succeeded = 0
        self._working_seconds = 0.0

    # RQ keeps the running job's Execution on the worker; with many jobs it is per thread.
    @property
    def execution(self):
        return getattr(self._local, "execution", None)

    @execution.setter
    def execution(self, value) -> None:
        self._local.execution = value

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # Redis going away for a moment (a restart, a failover) must not end the process: RQ's
    # dequeue waits and reconnects, but its other Redis calls in the loop (suspension check,
    # maintenance, heartbeats, state) would raise out of `work()` and stop the executor. Jobs
    # lost meanwhile are recon's to re-enqueue (executor/queues.py: live_jobs).
    def _riding_out(self, what: str, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.log.warning("Worker %s: %s failed (%s); going on", self.name, what, exc)
            return None

    def heartbeat(self, timeout=None, pipeline=None):
        """The worker's key, once per period; the counters of the jobs that succeeded since the
        last beat ride along (RQ writes both per job; dashboards read them from the key)."""
        if self.probe_beat is not None:  # the main loop goes round (its liveness probe)
            self.probe_beat.touch()
        if pipeline is not None or timeout is not None:
            return self._riding_out("heartbeat", super().heartbeat, timeout, pipeline)
        if time.monotonic() - self._beat_at < defaults.HEARTBEAT_EVERY_SECONDS:
            return None
        self._beat_at = time.monotonic()
        return self._riding_out("heartbeat", self._beat_with_counters)

    def _beat_with_counters(self) -> None:
        with self._inflight_lock:
            succeeded, seconds = self._succeeded, self._working_seconds
            self._succeeded, self._working_seconds = 0, 0.0
        with self.connection.pipeline(transaction=False) as pipeline:
            super().heartbeat(pipeline=pipeline)
            if succeeded:
                pipeline.hincrby(self.key, "successful_job_count", succeeded)
                pipeline.hincrbyfloat(self.key, "total_working_time", seconds)
            try:
                pipeline.execute()
            except (redis.ConnectionError, redis.TimeoutError):
                with self._inflight_lock:  # counted at the next beat instead
                    self._succeeded += succeeded
                    self._working_seconds += seconds
                raise

    def set_state(self, state: str, pipeline=None):
        """RQ's state, written only when it changes; `idle` only once no job is in flight
        (RQ says `idle` before every dequeue, but a worker running jobs is busy)."""
        with self._state_lock:
            if state == WorkerStatus.IDLE and self._inflight:
                state = WorkerStatus.BUSY
            if pipeline is None and state == self._state_written:
                return None
            self._state_written = state
            # Under the lock: two threads' writes must reach Redis in the order decided here.
            return self._riding_out("recording its state", super().set_state, state, pipeline)

    def run_maintenance_tasks(self) -> None:
        self._riding_out("maintenance", super().run_maintenance_tasks)

    def check_for_suspension(self, burst: bool) -> None:
        if time.monotonic() - self._suspension_checked_at < defaults.SUSPENSION_CHECK_EVERY_SECONDS:
            return
        self._suspension_checked_at = time.monotonic()
        try:
            super().check_for_suspension(burst)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.log.warning("Worker %s: suspension check failed (%s); going on", self.name, exc)
            time.sleep(defaults.REDIS_LOST_PAUSE_SECONDS)  # the dequeue then waits for Redis itself

    # Liveness for recon (executor/liveness.py): a beat every few seconds from its own thread.
    def register_birth(self) -> None:
        super().register_birth()
        self._beating = threading.Event()
        threading.Thread(target=self._beat, name="liveness", daemon=True).start()

    def register_death(self) -> None:
        beating = getattr(self, "_beating", None)
        if beating is not None:
            beating.set()
        try:
            liveness.leave(self.connection, self.name)
        except redis.RedisError:
            self.log.warning("Worker %s: could not leave the live executors", self.name)
        self._riding_out("a last heartbeat", self._beat_with_counters)  # the last successes
        super().register_death()

    def _beat(self) -> None:
        while True:
            try:
                liveness.beat(self.connection, self.name)
            except redis.RedisError as exc:  # recon may count us dead: say so, keep trying
                self.log.warning("Worker %s: liveness beat failed: %s", self.name, exc)
            if self._beating.wait(liveness.beat_seconds()):
                return

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Take a free slot, then a job; None on a stop request, when idle, or (burst) empty."""
        if not self._take_slot():
            return None
        result = None
        try:
            result = self._dequeue_polling(timeout, max_idle_time)
        finally:
            if result is None:
                self._slots.release()
        return result

    def _take_slot(self) -> bool:
        while not self._slots.acquire(timeout=defaults.SLOT_WAIT_SECONDS):
            self.heartbeat()
            if self._stop_requested:
                return False
        if self._stop_requested:
            self._slots.release()
            return False
        return True

    def _dequeue_polling(self, timeout, max_idle_time):
        # RQ's dequeue blocks until a job arrives; short polls let the loop see a stop request.
        if timeout is None:
            return self._dequeue_burst(max_idle_time)
        idle_since = time.monotonic()
        while not self._stop_requested:
            try:
                result = super().dequeue_job_and_maintain_ttl(
                    timeout, defaults.DEQUEUE_POLL_SECONDS
                )
            except redis.TimeoutError as exc:  # RQ waits out refused connections, not timeouts
                self.log.warning("Worker %s: dequeue timed out (%s); going on", self.name, exc)
                time.sleep(defaults.REDIS_LOST_PAUSE_SECONDS)
                continue
            if result is not None:
                return result
            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                return None
        return None

    def _dequeue_burst(self, max_idle_time):
        """Burst mode: a job, or None once the work is done. RQ's burst ends at the first empty
        look, stranding the retries its own jobs scheduled meanwhile (a saturated resource's
        request waits seconds, scheduled): this one ends when its queues are empty, no job is
        in flight and no retry of its queues falls due within BURST_SCHEDULED_WAIT_MAX."""
        names = self.queue_names()
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(None, max_idle_time)
            if result is not None:
                return result
            self._job_ended.clear()
            if self._inflight:  # a job that ends may schedule its own retry
                self._job_ended.wait(defaults.BURST_SCHEDULED_POLL_MAX)
                continue
            due_in = queues.next_scheduled_in(names)
            if due_in is None:
                return None
            if due_in > defaults.BURST_SCHEDULED_WAIT_MAX:
                self.log.info(
                    "Worker %s: done; retries scheduled in %.0fs are left to the next executor",
                    self.name,
                    due_in,
                )
                return None
            if due_in > 0:
                time.sleep(min(due_in, defaults.BURST_SCHEDULED_POLL_MAX))
            queues.enqueue_due_scheduled(names)
        return None

    def execute_job(self, job: Job, queue: Queue) -> None:
        with self._inflight_lock:
            self._inflight[job.id] = job
            self._cancels[job.id] = threading.Event()
        self.set_state(WorkerStatus.BUSY)
        self._pool.submit(self._run_job, job, queue)

    def _run_job(self, job: Job, queue: Queue) -> None:
        runtime.job_context.cancel = self._cancels.get(job.id)
        try:
            self.prepare_execution(job)
            self.perform_job(job, queue)
        except Exception:
            self.log.exception("Worker %s: job %s escaped RQ's handling", self.name, job.id)
        finally:
            self.execution = None
            runtime.job_context.cancel = None
            with self._inflight_lock:
                self._inflight.pop(job.id, None)
                self._cancels.pop(job.id, None)
                idle = not self._inflight
            if idle and not self._stop_requested:
                self.set_state(WorkerStatus.IDLE)
            self._slots.release()
            self._job_ended.set()

    # RQ's per-job bookkeeping, in one round trip at each end (issue 16: ≤ 12 Redis commands
    # per executed request). Dropped: what describes a worker running one job (its current
    # job id, a worker beat stretched to that job's timeout — the loop beats every period —
    # and the job's own beats, which only a forked horse needs), and the WATCH on dependents
    # (the executor's jobs never have RQ dependencies: pipelines and deals queue their steps
    # themselves). Kept: the Execution in the started registry and its record, the job's
    # status and times, its Result stream, the finished registry, the TTLs.
    def prepare_execution(self, job: Job) -> Execution:
        with self.connection.pipeline(transaction=False) as pipeline:
            ttl = self.get_heartbeat_ttl(job)
            self.execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.execute()
        return self.execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False):
        # The started state was written with the Execution (prepare_execution).
        if remove_from_intermediate_queue:
            queue = self.queue_class(job.origin, connection=self.connection)
            self.connection.lrem(queue.intermediate_queue_key, 1, job.id)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        job.ended_at = now()  # written with the outcome; no callbacks run in between

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry
    ) -> None:
        if job.repeats_left:  # RQ's repeat scheduling: its own path
            return super().handle_job_success(job, queue, started_job_registry)
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        execution = self.execution
        with self.connection.pipeline(transaction=False) as pipeline:
            if result_ttl != 0:
                pipeline.hset(
                    job.key,
                    mapping={"status": JobStatus.FINISHED, "ended_at": utcformat(job.ended_at)},
                )
                Result.create(
                    job,
                    Result.Type.SUCCESSFUL,
                    return_value=job._result,
                    ttl=result_ttl,
                    worker_name=self.name,
                    pipeline=pipeline,
                    execution_id=execution.id if execution else None,
                    execution_started_at=execution.created_at if execution else None,
                    execution_ended_at=job.ended_at,
                )
                job.finished_job_registry.add(job, result_ttl, pipeline)
            if result_ttl == 0:
                job.delete(pipeline=pipeline, remove_from_queue=False)
            elif result_ttl > 0:
                pipeline.expire(job.key, result_ttl)
            else:
                pipeline.persist(job.key)
            if execution is not None:
                execution.delete(job=job, pipeline=pipeline)
                self.execution = None
            pipeline.execute()
        with self._inflight_lock:
            self._succeeded += 1
            self._working_seconds += (job.ended_at - job.started_at).total_seconds()
        self.log.debug("Worker %s: job %s succeeded", self.name, job.id)  # RQ says "Job OK"

    def set_current_job_id(self, job_id, pipeline=None) -> None:
        # One id cannot describe many jobs; `rq info` lists the jobs of the started registry.
        return None

    def handle_payload(self, message) -> None:
        """RQ's stop-job command (sent when a client cancels) cancels that job's calls."""
        payload = parse_payload(message)
        if payload.get("command") != "stop-job":
            return super().handle_payload(message)
        with self._inflight_lock:
            cancel = self._cancels.get(payload.get("job_id"))
        if cancel is not None:
            self.log.info("Worker %s: stopping job %s on request", self.name, payload["job_id"])
            cancel.set()

    def set_current_job_working_time(self, current_job_working_time, pipeline=None):
        # One figure cannot describe many jobs; RQ keeps per-job times on each Execution.
        return None

    # Signals: never raise inside the main loop (it may be mid-dequeue); it polls the flags.
    def _shutdown(self) -> None:
        self._stop_signal_at = time.monotonic()
        self._stop_requested = True
        self.set_shutdown_requested_date()
        self.log.info(
            "Worker %s: stopping; %d job(s) in flight get %ss to finish",
            self.name,
            self.inflight,
            self.shutdown_grace,
        )

    def request_force_stop(self, signum, frame) -> None:
        # A process group's Ctrl-C plus a supervisor's SIGTERM arrive together: one request.
        if time.monotonic() - self._stop_signal_at < defaults.FORCE_STOP_DEBOUNCE_SECONDS:
            return
        self.log.warning(
            "Worker %s: second signal, handing back %d job(s) now", self.name, self.inflight
        )
        self._force_stop.set()

    def teardown(self) -> None:
        self._drain()
        super().teardown()

    def _drain(self) -> None:
        """Wait for in-flight jobs; past the grace period hand the rest back to their queues."""
        deadline = time.monotonic() + self.shutdown_grace
        last_beat = time.monotonic()
        while self._inflight and not self._force_stop.is_set():
            if self._stop_requested and time.monotonic() >= deadline:
                break
            if time.monotonic() - last_beat > defaults.SLOT_WAIT_SECONDS:
                self.heartbeat()
                last_beat = time.monotonic()
            self._force_stop.wait(0.05)
        if self._inflight:
            self.log.warning("Worker %s: handing back %d job(s)", self.name, self.inflight)
            runtime.hand_back.set()
        self._pool.shutdown(wait=True)
