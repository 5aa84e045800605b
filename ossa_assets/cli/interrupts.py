"""Ctrl-C and SIGTERM for `ossa materialize`, as users expect them.

The first signal cancels the current run cleanly and stops the command; a second exits at once.

Dagster swaps its own SIGINT/SIGTERM handlers in while a run executes and restores ours after,
forgetting the interrupt: the run ends FAILED and the loop used to go on to the next partition.
A wakeup fd sees every signal whichever Python handler is installed, so a watcher thread counts
them: on the first it asks Dagster to cancel the current run (CANCELING: the run then ends
CANCELED, its steps stopped by the executor); on the second it kills this process's descendants
(step processes, the forkserver, torchrun ranks) and exits with 130 — what is left is an orphan
that the next `ossa materialize`, the daemon or `ossa doctor --repair` recovers.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    def __init__(self, log=print):
        self.log = log
        self.signal_name: str | None = None
        self._count = 0
        self._active = False
        self.exiting = threading.Event()

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; nothing to watch from here
        self._rsock, self._wsock = socket.socketpair()
        self._wsock.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        self._old_handlers = {s: signal.getsignal(s) for s in _SIGNALS}
        # a Python-level handler is what makes the wakeup fd see SIGTERM; outside Dagster's runs
        # SIGTERM then stops the loop like Ctrl-C instead of killing the process mid-write
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import dagster as dg

        self._instance = dg.DagsterInstance.get()  # built now: the cancel request races the run's end
        self._active = True
        self._thread = threading.Thread(target=self._watch, name="ossa-interrupts", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._active or self.signal_name:
            return  # interrupted: keep watching, so a second Ctrl-C while it winds down exits at once
        signal.set_wakeup_fd(self._old_fd)
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._active = False
        self._wsock.close()
        self._rsock.close()

    def _watch(self) -> None:
        while True:
            try:
                data = self._rsock.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in _SIGNALS:
                    continue
                self._count += 1
                if self._count == 1:
                    self.signal_name = signal.Signals(signum).name
                    self.log(f"{self.signal_name}: canceling the current run, then stopping "
                             "(press Ctrl-C again to exit at once)")
                    # its own thread: the cancel request may wait on the database while the
                    # run writes events, and a second Ctrl-C must still be seen at once
                    threading.Thread(target=self._request_cancel, name="ossa-cancel", daemon=True).start()
                else:
                    self._exit_now()

    def _exit_now(self) -> None:
        from ossa_assets.lib.processes import kill_descendants

        self.exiting.set()  # the main thread must not finish first and skip the kill
        self.log("second interrupt: exiting now (killing child processes; the next "
                 "`ossa materialize` or `ossa doctor --repair` recovers the run)")
        kill_descendants()
        os._exit(130)

    def hold_if_exiting(self) -> None:
        """Called last by the main thread: a second interrupt being handled ends the process."""
        if self.exiting.is_set():
            threading.Event().wait(30)

    def _own_live_runs(self, inst):
        import dagster as dg

        from ossa_assets.recovery import LIVE_STATUSES, PID_TAG

        return inst.get_runs(filters=dg.RunsFilter(statuses=LIVE_STATUSES, tags={PID_TAG: str(os.getpid())}))

    def _request_cancel(self) -> None:
        import dagster as dg

        try:
            inst = self._instance
            for run in self._own_live_runs(inst):
                if run.status != dg.DagsterRunStatus.CANCELING:
                    inst.report_run_canceling(run, message=f"{self.signal_name} received by ossa materialize")
        except Exception as e:  # the run is still canceled when it returns (finish_canceled)
            self.log(f"could not mark the run CANCELING yet: {type(e).__name__}: {e}")

    def note_outside_run(self) -> None:
        if self.signal_name is None:
            self.signal_name = "SIGINT"

    def finish_canceled(self, inst, run_id: str) -> str:
        """The interrupted run ends CANCELED with its slots freed, whatever state Dagster left it in."""
        import dagster as dg

        run = inst.get_run_by_id(run_id)
        if run is not None and run.status != dg.DagsterRunStatus.CANCELED:
            inst.report_run_canceled(run, message=f"Canceled: {self.signal_name} received by ossa materialize")
        inst.event_log_storage.free_concurrency_slots_for_run(run_id)
        return f"CANCELED by {self.signal_name} (run {run_id[:8]}, slots freed)"

    def cancel_own_runs(self, inst) -> list[str]:
        """Runs of this process still in progress (interrupted before Dagster could start them)."""
        return [f"{run.job_name}: {self.finish_canceled(inst, run.run_id)}" for run in self._own_live_runs(inst)]
