"""Serving at raw speed: the batcher's adaptive window and admission count, and the per-device
quantization default (``auto``) with its reason."""

from __future__ import annotations

import threading
import time

import pytest
from tracemark.server.batching import GenerationQueue
from tracemark.server.config import load_settings
from tracemark.server.teacher.base import (
    Generation,
    GenerationParams,
    TeacherBackend,
    TeacherError,
    TeacherInfo,
)
from tracemark.server.teacher.local import LocalTeacher
from tracemark.server.teacher.quantization import CPU_REASON, DYNAMIC_INT8, resolve_quantization

MSG = [{"role": "user", "content": "What is 2 + 3?"}]


class _Recorder(TeacherBackend):
    """Records the size of every batch it is given."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.info = TeacherInfo(model_id="recorder", backend="test", quantization="none")

    def generate_batch(self, conversations, params, on_text=None):
        self.sizes.append(len(conversations))
        return [Generation(text="#### 1") for _ in conversations]


def test_arrivals_keep_the_window_open_until_one_window_passes_without_any():
    teacher = _Recorder()
    window = 0.2
    queue = GenerationQueue(teacher, max_batch=8, window_s=window, max_queue=8)
    futures = []
    for _ in range(3):  # 3 arrivals 0.6 window apart: the last came 1.2 windows after the first
        futures.append(queue.submit(MSG, GenerationParams()))
        time.sleep(0.6 * window)
    for f in futures:
        f.result(10)
    time.sleep(2 * window)  # well past the window: the next arrival starts a batch of its own
    queue.submit(MSG, GenerationParams()).result(10)
    queue.close(timeout=5)
    assert teacher.sizes == [3, 1]


def test_a_batch_waits_for_a_request_being_admitted():
    teacher = _Recorder()
    window = 0.1
    queue = GenerationQueue(teacher, max_batch=8, window_s=window, max_queue=8)
    admitting = threading.Event()
    late: list = []

    def slow_admission() -> None:
        with queue.admitting():  # e.g. a ledger look-up before submit, longer than the window
            admitting.set()
            time.sleep(2 * window)
            late.append(queue.submit(MSG, GenerationParams()))

    thread = threading.Thread(target=slow_admission)
    thread.start()
    admitting.wait(5)
    first = queue.submit(MSG, GenerationParams())
    thread.join(10)
    first.result(10), late[0].result(10)
    queue.close(timeout=5)
    assert teacher.sizes == [2]


def test_a_request_not_announced_misses_a_batch_already_closed():
    teacher = _Recorder()
    window = 0.03
    queue = GenerationQueue(teacher, max_batch=8, window_s=window, max_queue=8)
    first = queue.submit(MSG, GenerationParams())
    first.result(10)
    queue.submit(MSG, GenerationParams()).result(10)
    queue.close(timeout=5)
    assert teacher.sizes == [1, 1]


def test_auto_quantization_is_chosen_per_device_with_its_reason():
    assert resolve_quantization("auto", "cpu") == (DYNAMIC_INT8, CPU_REASON)
    mode, reason = resolve_quantization("auto", "cuda")
    assert mode == "nf4" and reason.startswith("auto on cuda")
    assert resolve_quantization("nf4", "cpu") == ("nf4", "")
    assert load_settings().teacher.quantization == "auto"


@pytest.fixture(scope="module")
def dynamic_teacher(tiny_model_dir):
    return LocalTeacher(tiny_model_dir, quantization="auto", device="cpu", max_batch_size=4)


def test_auto_on_cpu_loads_dynamic_int8_and_says_why(dynamic_teacher, tiny_model_dir):
    info = dynamic_teacher.info
    assert info.quantization == DYNAMIC_INT8
    assert info.quantization_note.startswith("auto on cpu: int8-dynamic")
    fp32 = LocalTeacher(tiny_model_dir, quantization="none", device="cpu")
    assert 0 < info.parameter_bytes < fp32.info.parameter_bytes  # int8 linear weights counted, smaller
    out = dynamic_teacher.generate_batch([MSG, MSG], GenerationParams(max_new_tokens=6))
    assert [g.completion_tokens for g in out] == dynamic_teacher.generate_plain(
        [MSG, MSG], GenerationParams(6)
    )


def test_unknown_dtype_is_refused(tiny_model_dir):
    with pytest.raises(TeacherError, match="dtype"):
        LocalTeacher(tiny_model_dir, quantization="none", device="cpu", dtype="float8")


def test_the_embedded_class_of_teacher_never_weaves_pairs(tmp_path):
    from tracemark.server.app import TracemarkServer  # deferred: the gRPC stack, for this test only

    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0"},
            "teacher": {"backend": "tiny", "max_new_tokens": 2},
            "rewrite": {"watermark_weave": "llm", "llm": "teacher"},
            "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}", "master_key_file": tmp_path / "m.key"},
        }
    )
    server = TracemarkServer(settings)
    server.start()
    try:
        assert server.wait_ready(120), server.runtime.load_error
        assert server.runtime._policy().mode == "template"
    finally:
        server.stop(0)


def test_a_batch_waits_for_clients_whose_replies_are_being_rewritten_but_not_for_internal_calls():
    teacher = _Recorder()
    window = 0.1
    queue = GenerationQueue(teacher, max_batch=8, window_s=window, max_queue=8)
    queue._last_generate_s = 4.0  # a previous batch took 4 s: the hold may reach 0.4 s
    rewriting = threading.Event()
    follower: list = []

    def rewrite_then_come_back() -> None:
        with queue.rewriting():  # the rewrite of its last reply takes two windows
            rewriting.set()
            time.sleep(2 * window)
        follower.append(queue.submit(MSG, GenerationParams()))

    thread = threading.Thread(target=rewrite_then_come_back)
    thread.start()
    rewriting.wait(5)
    first = queue.submit(MSG, GenerationParams())
    thread.join(10)
    first.result(10), follower[0].result(10)
    assert teacher.sizes == [2]

    # A rewrite waiting on its own LLM call through the queue is not awaited as a coming request.
    start = time.monotonic()
    with queue.rewriting():
        queue.submit(MSG, GenerationParams(), internal=True).result(10)
    assert time.monotonic() - start < 0.3 and teacher.sizes == [2, 1]
    queue.close(timeout=5)
