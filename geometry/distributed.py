"""Several processes, one computation: jax.distributed for the experiments, benchmarks and scripts.

Every field (`jacobians.jacobian_field`, `probe`'s per-layer fields, `matfree`'s spectra) is
computed by `jacobians.map_points`, which splits the points over all devices of all processes
(`jax.devices()`) and hands every process the whole result. So a script runs unchanged on
N processes once `initialize` has been called, provided every process passes the same points
(the library's experiments do: their data and seeds are deterministic).

Launching (the flags of `python -m experiments` and of the benchmarks):
* explicit: `--coordinator HOST:PORT --num-processes N --process-id I` on each process;
* automatic: under SLURM (`srun`, more than one task), Open MPI (`mpirun`) and multi-host TPU
  slices, `jax.distributed.initialize()` finds the coordinator and ranks itself, so no flag
  is needed (`detected_cluster` says which was found).
On CPU the processes talk over gloo (set here before JAX's backend starts).

Process 0 writes (figures, JSON, manifest, checkpoints); the others compute their share and
exit 0 (`is_writer`). When a process dies, the coordination service notices after
`heartbeat_timeout` seconds; `Watchdog` then names the lost processes on stderr, runs the
registered clean-up (the runner removes its staged, unpublished outputs) and exits with code 1,
so no survivor hangs and nothing partial is published. Process 0 hosts the coordination
service: when it dies, JAX's runtime aborts the others at once, from C++, before Python can say
why; `supervise` runs the work in a child process so that a parent can say it (the command
line tools do this).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import jax

DEFAULT_HEARTBEAT_TIMEOUT = 30  # seconds; JAX's own default (100) would leave survivors waiting for minutes


def detected_cluster(environ=os.environ) -> str | None:
    """"SLURM", "Open MPI" or "TPU pod" when the environment is a multi-process launch of one of them
    (what `jax.distributed.initialize()` detects without arguments), else None."""
    def count(*names):
        for name in names:
            try:
                return int(environ[name])
            except (KeyError, ValueError):
                continue
        return 1

    if "SLURM_JOB_ID" in environ and count("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS") > 1:
        return "SLURM"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    if "," in environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in environ:
        return "TPU pod"
    return None


def add_arguments(parser) -> None:
    """The launch flags, shared by `python -m experiments` and the benchmarks."""
    group = parser.add_argument_group("several processes (jax.distributed)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordination service")
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's rank, 0..N-1 (0 writes outputs)")
    group.add_argument("--heartbeat-timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT, metavar="S",
                       help=f"seconds without a heartbeat before a process counts as lost (default "
                            f"{DEFAULT_HEARTBEAT_TIMEOUT})")


def parse_args(parser, argv=None):
    """The parser's arguments plus the launch flags (`add_arguments`), checked: a bad flag exits 2
    through `parser.error`, naming it, before any process waits for this one."""
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        check_arguments(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout)
    except ValueError as error:
        parser.error(str(error))
    return args


def join(args) -> int:
    """`initialize` from parsed launch flags; returns the process count."""
    return initialize(args.coordinator, args.num_processes, args.process_id, heartbeat_timeout=args.heartbeat_timeout)


def check_arguments(coordinator, num_processes, process_id, heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT) -> None:
    """ValueError naming the problem with the launch flags (all three or none; sane values)."""
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("--coordinator, --num-processes and --process-id go together: give all three (or none, "
                         "under SLURM, Open MPI or a TPU pod, where they are detected)")
    if not all(given):
        return
    if not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", coordinator) or not 0 < int(coordinator.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT with a port in 1..65535, got {coordinator!r}")
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
    if heartbeat_timeout < 1:
        raise ValueError(f"--heartbeat-timeout must be >= 1 second, got {heartbeat_timeout}")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT) -> int:
    """Join the processes: with the three arguments, or from a detected cluster when none is given.
    Does nothing for a single process. Call it before any JAX computation. Returns the process count."""
    check_arguments(coordinator, num_processes, process_id, heartbeat_timeout)
    if coordinator is None and detected_cluster() is None:
        return 1
    if num_processes == 1:
        return 1
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need a collectives backend
    jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout)
    return jax.process_count()


def is_writer() -> bool:
    """True on the one process that writes outputs and checkpoints (process 0)."""
    return jax.process_index() == 0


def _client():
    from jax._src import distributed  # the client jax.distributed.initialize created; no public accessor

    return distributed.global_state.client


def lost_processes() -> list[int]:
    """The processes the coordination service no longer hears from. It blocks until every live process
    has asked (or the heartbeat timeout has passed); [0] when the coordinator itself is unreachable."""
    everyone = list(range(jax.process_count()))
    try:
        live = _client().get_live_nodes(everyone)
    except Exception:  # noqa: BLE001 - an unreachable service means process 0, which hosts it, is gone
        return [0]
    return [i for i in everyone if i not in live]


def _exit(message: str, cleanup: Callable[[], None] | None) -> None:
    print(f"process {jax.process_index()} of {jax.process_count()}: {message}", file=sys.stderr, flush=True)
    if cleanup is not None:
        cleanup()
    sys.stdout.flush()
    os._exit(1)  # not sys.exit: JAX's atexit shutdown barrier would wait for the lost process


class Watchdog:
    """A daemon thread that asks the coordination service which processes are alive, round after
    round (a round returns when every live process has asked); when one is missing it names it,
    runs `cleanup` and exits 1. `fail(error)` is for the main thread's exceptions: it gives the
    watchdog time to find a lost peer (the usual cause of a failed collective), else reports the
    error itself. `stop()` before a normal exit, so a peer's shutdown is not taken for a loss."""

    def __init__(self, heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT, interval: float = 2.0):
        self.cleanup: Callable[[], None] | None = None  # set by the caller to what must go on failure
        self.grace = heartbeat_timeout + 3 * interval + 5
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="layer-geometry-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        if jax.process_count() > 1:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def fail(self, error: BaseException) -> None:
        """Called with the main thread's exception under several processes; never returns."""
        import traceback

        if self._thread.is_alive():
            self._thread.join(self.grace)  # exits the process itself if a peer was lost
        _exit(f"failed: {''.join(traceback.format_exception(error)).rstrip()}\nno process was lost; the others stop "
              "when they miss this one. Nothing of this run was published.", self.cleanup)

    def _linger(self, lost: set[int]) -> None:
        """On process 0, which hosts the coordination service: keep it up (answering the liveness
        rounds) until every other survivor has seen the loss and gone, or `grace` passes. Leaving
        at once would make a slower survivor find the coordinator gone and blame process 0."""
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            if set(lost_processes()) >= set(range(1, jax.process_count())):
                return
            time.sleep(self.interval / 4)

    def _watch(self) -> None:
        parent = os.getppid()
        while not self._stopped.wait(self.interval):
            if os.environ.get(CHILD) == "1" and os.getppid() != parent:
                _exit("the supervising process is gone; exiting with code 1", self.cleanup)
            lost = lost_processes()
            if lost and not self._stopped.is_set():
                if jax.process_index() == 0:
                    self._linger(set(lost))
                who = ", ".join(f"process {i}" + (" (the coordinator)" if i == 0 else "") for i in lost)
                _exit(f"lost {who} (no heartbeat for the timeout, or its connection closed); exiting with code 1. "
                      "Nothing of this run was published.", self.cleanup)


CHILD = "LAYER_GEOMETRY_SUPERVISED"  # set in the environment of the process `supervise` starts


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux), so killing a launched process
    kills its work too and its peers see it go."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the watchdog notices the parent is gone


def _answers(address: str | None, timeout: float = 3.0) -> bool:
    if address is None:
        return True
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _relay_stderr(stream, unhealthy: list[int]) -> None:
    """Copy the child's stderr to ours, line by line, noting the processes JAX's coordination
    service reports as "unhealthy (stopped sending heartbeats):" (listed on the next line)."""
    listed_next = False
    for raw in stream:
        line = raw.decode(errors="replace")
        sys.stderr.write(line)
        sys.stderr.flush()
        if listed_next and not unhealthy:
            tasks = re.findall(r"task:(\d+)", line) or (re.findall(r"\d+", line) if re.fullmatch(r"[\d,\s]+", line)
                                                         else [])
            unhealthy.extend(int(task) for task in tasks)
        listed_next = "stopped sending heartbeats" in line


def supervise(command: list[str], coordinator: str | None, process_id: int | None, num_processes: int | None) -> int:
    """Run `command` (this same tool) as a child and return its exit code; when JAX's runtime killed the
    child (an abort, which is how it ends the survivors of a lost coordinator), say which process was
    lost and return 1. SIGTERM and SIGINT are passed on to the child."""
    child = subprocess.Popen(command, env={**os.environ, CHILD: "1"}, preexec_fn=_die_with_parent,
                             stderr=subprocess.PIPE)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: child.send_signal(number))
    unhealthy: list[int] = []
    relay = threading.Thread(target=_relay_stderr, args=(child.stderr, unhealthy), daemon=True)
    relay.start()
    code = child.wait()
    relay.join(10)
    if code >= 0 and code != 128 + signal.SIGABRT:
        return code
    me = f"process {process_id} of {num_processes}" if process_id is not None else "this process"
    if unhealthy:  # JAX's coordination service named the process that stopped: trust it over a guess
        reason = (f"lost process {', '.join(map(str, unhealthy))} (it stopped sending heartbeats; JAX's runtime then "
                  "ended the others)")
    elif coordinator is not None and not _answers(coordinator):
        reason = f"lost process 0 (the coordinator at {coordinator} no longer answers)"
    else:
        reason = f"JAX's distributed runtime ended it (signal {-code if code < 0 else signal.SIGABRT}; see the log above)"
    print(f"{me}: {reason}; exiting with code 1. Nothing of this run was published.", file=sys.stderr, flush=True)
    return 1
