"""one_call_at_a_time: the decorated methods of one backend never overlap; other instances do not wait."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from services.common.serial import one_call_at_a_time


class Backend:
    def __init__(self):
        self.running = 0
        self.most = 0
        self.guard = threading.Lock()

    def _enter(self):
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)

    def _leave(self):
        with self.guard:
            self.running -= 1

    @one_call_at_a_time
    def render(self, seconds: float) -> str:
        self._enter()
        time.sleep(seconds)
        self._leave()
        return "rendered"

    @one_call_at_a_time
    def render_twice(self) -> list[str]:
        return [self.render(0.0), self.render(0.0)]  # re-entrant: no deadlock


def test_calls_of_one_instance_run_one_at_a_time_and_may_nest():
    backend = Backend()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: backend.render(0.01), range(16)))
    assert results == ["rendered"] * 16 and backend.most == 1
    assert backend.render_twice() == ["rendered", "rendered"]
    assert Backend.render.__name__ == "render"


def test_separate_instances_do_not_wait_for_each_other():
    first, second = Backend(), Backend()
    started = threading.Event()
    release = threading.Event()

    class Blocking(Backend):
        @one_call_at_a_time
        def block(self):
            started.set()
            assert release.wait(5)

    blocking = Blocking()
    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(blocking.block)
        assert started.wait(5)
        assert first.render(0.0) == second.render(0.0) == "rendered"  # not held up by `blocking`
        release.set()
        pending.result(5)
