"""The one `with` protocol of the dev stack's process groups: start on entry (stopping whatever
did start if that fails part-way), stop on exit."""

from __future__ import annotations

import os
import signal
import subprocess
from types import TracebackType
from typing import Self


class Managed:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedServers(Managed):
    """A group of server processes, one per port (the Sentinel and Cluster stacks)."""

    processes: dict[int, subprocess.Popen[bytes]]

    def kill(self, port: int) -> None:
        """SIGKILL a node: no shutdown, nothing flushed, connections reset."""
        process = self.processes.pop(port)  # processes: the servers meant to be running
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
