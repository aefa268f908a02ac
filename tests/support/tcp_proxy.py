"""A TCP proxy on 127.0.0.1 that can cut its connections, to fail a service without stopping it.

    with TcpProxy("127.0.0.1", 5432) as proxy:      # workers connect to proxy.port
        ...
        proxy.cut()       # drop every open connection and refuse new ones (accept, then close)
        time.sleep(4)
        proxy.restore()   # connect through again

Threads only (one per direction per connection); loopback only. ``cut_connections`` and
``refused`` count what the outage did.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._blocked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.connections = 0  # proxied connections opened
        self.cut_connections = 0  # open connections dropped by cut()
        self.refused = 0  # connections closed at once while cut

    # lifecycle
    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self._drop_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # faults
    def cut(self) -> int:
        """Drop every open connection and refuse new ones until :meth:`restore`."""
        self._blocked.set()
        dropped = self._drop_all()
        with self._lock:
            self.cut_connections += dropped
        return dropped

    def restore(self) -> None:
        self._blocked.clear()

    @property
    def blocked(self) -> bool:
        return self._blocked.is_set()

    # machinery
    def _drop_all(self) -> int:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
        return len(pairs)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._blocked.is_set():
                with self._lock:
                    self.refused += 1
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                    client.close()  # linger 0: the client sees a reset
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):  # one side ended: end the other, and free both
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._pairs = [p for p in self._pairs if src not in p]
