"""vLLM's waiting queue as TRAIL keeps it: a priority queue that records who came and went."""

from __future__ import annotations

import heapq

from vllm.v1.core.sched.request_queue import PriorityRequestQueue
from vllm.v1.request import Request


class RankedQueue(PriorityRequestQueue):
    """vLLM's priority queue, plus what TRAIL needs of it every step without sorting it
    (iterating vLLM's queue pops a copy of the heap: n log n comparisons of requests in
    Python): which requests it holds and which came or went since TRAIL last looked (every
    change of membership goes through these methods; prepending is adding), and restoring
    the heap after their priorities changed (one heapify)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.moved: set[str] = set()

    def add_request(self, request: Request) -> None:
        super().add_request(request)
        self._came_or_went(request, self.ids.add)

    def pop_request(self) -> Request:
        request = super().pop_request()
        self._came_or_went(request, self.ids.discard)
        return request

    def remove_request(self, request: Request) -> None:
        super().remove_request(request)
        self._came_or_went(request, self.ids.discard)

    def remove_requests(self, requests) -> None:
        requests = requests if isinstance(requests, set) else set(requests)
        super().remove_requests(requests)
        for request in requests:
            self._came_or_went(request, self.ids.discard)

    def _came_or_went(self, request: Request, change) -> None:
        change(request.request_id)
        self.moved.add(request.request_id)

    def unordered(self) -> list[Request]:
        return list(self._heap)

    def reorder(self) -> None:
        heapq.heapify(self._heap)
