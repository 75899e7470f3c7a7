"""Preemption: SIGTERM or SIGINT ends training at a checkpoint, and a relaunch resumes.

A preemptible Cloud TPU VM, a GKE or SLURM job and Ctrl-C all send a signal first (SIGTERM; SIGINT
for Ctrl-C) and give the process some seconds. Inside `stop_on_signals` (launch.py's main, the
main thread), the first such signal does not end the process: every training loop (a single run,
each run of a sweep) finishes the step it is on, saves that step's checkpoint, waits until the
write is complete and raises `Preempted`; launch.py logs one line and exits with 128 + the
signal's number (143 for SIGTERM, 130 for SIGINT), the status a shell reports for a process that
signal ended, so that a scheduler's retry rules for signals still apply. A second signal while
the checkpoint is written is logged and ignored: the write ends, and a kill -9 at any point leaves
the newest complete checkpoint as the newest (orbax renames a step's folder when it is complete).

Several hosts (`jax.distributed`): JAX's preemption service owns SIGTERM there (its notifier
tells every host through the coordination service), and a run over all hosts stops at the step
`multihost_utils.reached_preemption_sync_point` names: the same step on every host, as a
collective checkpoint needs. SIGINT on one host is passed on as SIGTERM to that service. Without
`jax.distributed` each process only knows its own signals.
"""
import contextlib
import logging
import os
import signal
import sys
import threading

from nin_jax.errors import NinError

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []  # the notice: the signal that gave it, once; empty without one


class Preempted(NinError):
  """Training stopped at a checkpoint on a preemption notice; relaunching resumes. `signum`: the
  signal; `step`: the step checkpointed (None for a sweep); `exit_status`: 128 + `signum`."""

  def __init__(self, message: str, signum: int, step: int | None = None):
    super().__init__(message)
    self.signum, self.step, self.exit_status = signum, step, 128 + signum


def _distributed() -> bool:
  if "jax" not in sys.modules:  # not started (and not imported here: launch.py's flag errors
    return False                # stay fast)
  from jax._src import distributed
  return distributed.global_state.client is not None


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


def received() -> int | None:
  """The signal of this process's preemption notice (SIGTERM, SIGINT), or None without one."""
  return _received[0] if _received else None


def _note(signum: int) -> bool:
  """Gives this process the notice of `signum`; False where it had one already."""
  if _received:
    return False
  _received.append(signum)
  return True


def _handler(signum, frame):
  del frame
  if not _note(signum):
    logging.warning("%s received again: the checkpoint is finished first (kill -9 ends the "
                    "process at once; the newest complete checkpoint stays)", signal_name(signum))
    return
  logging.warning("%s received: training stops after the step it is on, at a checkpoint of "
                  "that step (a run past its last step finishes)", signal_name(signum))
  if signum != signal.SIGTERM and _distributed():
    os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service, which tells every host


@contextlib.contextmanager
def stop_on_signals():
  """SIGTERM and SIGINT, inside, stop training at a checkpoint instead of ending the process.
  Call it from the main thread (Python runs signal handlers there); elsewhere it does nothing.
  The handlers before it are restored on the way out, and the notice cleared."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  # With jax.distributed, JAX's preemption notifier holds SIGTERM (a C handler): replacing it
  # would keep the other hosts from learning of the notice.
  mine = [s for s in SIGNALS if not (s == signal.SIGTERM and _distributed())]
  previous = {s: signal.signal(s, _handler) for s in mine}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _received.clear()


def should_stop(step: int, all_hosts: bool) -> bool:
  """Whether a training loop stops after `step` (steps done), on a preemption notice.
  `all_hosts`: the run spans every process of jax.distributed, so every host must stop at the same
  step; each host calls this at every step."""
  if all_hosts and _distributed():
    from jax.experimental import multihost_utils
    if multihost_utils.reached_preemption_sync_point(step):
      _note(signal.SIGTERM)  # where the notice came through JAX's preemption service
      return True
    return False
  return bool(_received)


@contextlib.contextmanager
def watch_all_hosts(interval_s: float = 1.0):
  """For training loops not in step with the other hosts' (the runs of a sweep that hosts split,
  each on devices of one host): with jax.distributed, a thread asks JAX's preemption service
  every `interval_s` seconds whether a host got a notice, and gives this process the notice
  (SIGTERM) when one did; every host's runs then stop at a checkpoint of their own. Without
  jax.distributed it does nothing (each process has only its own signals)."""
  if not _distributed():
    yield
    return
  from jax.experimental import multihost_utils
  done = threading.Event()

  def poll():
    tick = 0  # the service's sync point is the hosts' largest tick + 1: each host reaches it
    while not done.wait(interval_s):
      tick += 1
      if multihost_utils.reached_preemption_sync_point(tick):
        if _note(signal.SIGTERM):
          logging.warning("A host of this job got a preemption notice: stopping every run "
                          "at a checkpoint")
        return

  thread = threading.Thread(target=poll, name="preemption-watch", daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


class Ended(BaseException):
  """Raised by `end_on_signals`' handler: a BaseException, as KeyboardInterrupt is, so that
  libraries' `except Exception` let it through."""


@contextlib.contextmanager
def end_on_signals(grace_s: float = 5.0, on_stuck=None):
  """For commands with nothing to checkpoint (`python -m nin_jax.benchmark`): SIGTERM and SIGINT,
  inside, raise `Ended` in the main thread, so that what the command was doing unwinds (its
  temporary folders removed, a child process killed, no output file half-written). Yields a list
  that holds the signal once one came: code that catches every exception may turn it into
  another (or, rarely, hold it and go on), so the caller asks the list, not the exception's
  type, and exits with 128 + the signal. Where the exception is held (TensorFlow's C++ code
  calling back into Python swallowed it, seen in this project's benchmark test) and the command
  has not ended `grace_s` seconds after the signal, a watchdog thread calls `on_stuck()` (the
  caller's cleanup, which prints its line) and ends the process with 128 + the signal. Main
  thread only, as `stop_on_signals`; the handlers before it are restored on the way out."""
  ended: list[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield ended
    return

  def end(signum, frame):
    del frame
    for s in SIGNALS:  # a second signal while unwinding lets the cleanup finish
      signal.signal(s, signal.SIG_IGN)
    ended.append(signum)

    def stuck():
      if on_stuck is not None:
        on_stuck()
      os._exit(128 + signum)  # the main thread holds the exception: end here

    watchdog = threading.Timer(grace_s, stuck)
    watchdog.daemon = True
    watchdog.start()
    raise Ended(f"stopped by {signal_name(signum)}")

  previous = {s: signal.signal(s, end) for s in SIGNALS}
  try:
    yield ended
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
