"""The batching queue with a real tiny model, and its bounds."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tracemark.server.batching import GenerationQueue, QueueFull
from tracemark.server.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherInfo
from tracemark.server.teacher.local import LocalTeacher

MSG = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def tiny_teacher(tiny_model_dir):
    return LocalTeacher(tiny_model_dir, quantization="none", device="cpu", max_batch_size=8)


def test_local_teacher_reports_what_is_in_effect(tiny_teacher):
    info = tiny_teacher.info
    assert info.quantization == "none" and info.device == "cpu" and info.dtype == "float32"
    assert info.parameter_bytes > 0


def test_concurrent_requests_share_batches(tiny_teacher):
    queue = GenerationQueue(tiny_teacher, max_batch=8, window_s=0.2, max_queue=32)
    params = GenerationParams(max_new_tokens=8)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: queue.generate(MSG, params, timeout=60), range(8)))
    queue.close(timeout=5)
    assert all(isinstance(r, Generation) and r.completion_tokens > 0 for r in results)
    # Greedy decoding of the same prompt: batched rows agree with each other.
    assert len({r.text for r in results}) == 1
    assert queue.largest_batch > 1
    assert queue.batches_run < 8


def test_streaming_callback_sees_the_text(tiny_teacher):
    queue = GenerationQueue(tiny_teacher, max_batch=4, window_s=0.0, max_queue=4)
    pieces: list[str] = []
    result = queue.submit(MSG, GenerationParams(max_new_tokens=12), on_text=pieces.append).result(60)
    queue.close(timeout=5)
    assert "".join(pieces).strip() == result.text


class _SlowTeacher(TeacherBackend):
    """Blocks until released: lets the test fill the queue deterministically."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.info = TeacherInfo(model_id="slow", backend="test", quantization="none")

    def generate_batch(self, conversations, params, on_text=None):
        self.release.wait(10)
        return [Generation(text="#### 1") for _ in conversations]


def test_full_queue_is_refused_and_nothing_is_lost():
    teacher = _SlowTeacher()
    queue = GenerationQueue(teacher, max_batch=1, window_s=0.0, max_queue=2)
    first = queue.submit(MSG, GenerationParams())
    deadline = time.monotonic() + 5
    while queue.depth and time.monotonic() < deadline:  # worker picked the first job
        time.sleep(0.01)
    accepted = [queue.submit(MSG, GenerationParams()) for _ in range(2)]
    with pytest.raises(QueueFull):
        queue.submit(MSG, GenerationParams())
    teacher.release.set()
    assert [f.result(10).text for f in [first, *accepted]] == ["#### 1"] * 3
    queue.close(timeout=5)
