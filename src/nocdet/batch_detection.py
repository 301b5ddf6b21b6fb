"""Detection over many images (``nocdet detect`` on a folder, ``evaluate --checkpoint`` on a split),
pipelined for the frozen-feature detector so that no core sits idle.

One image costs Selective Search (OpenCV, one thread), then the pyramid backbone, RoI pooling,
the NoC and post-processing (torch). One image at a time, a second core idles during Selective
Search, and a second torch thread helps the small backbones on ~300 px images little (demo
config on the 2-core VM: 0.9-1.2x the speed of one thread, from run to run). The pipeline keeps
every core busy with whole images instead::

    this thread:         decode image i (``load``), up to 2 x (workers + lanes) images ahead
    worker processes:    Selective Search of image i                      (``workers``)
    lane threads:        pyramid + pooling + NoC + NMS of image i, each   (``lanes``)
                         with one torch thread
    this thread:         results yielded in input order

With ``threads`` CPUs (``--threads``): ``threads`` lanes and ``threads // 2`` workers
(:func:`pipeline_split`); a budget of one CPU gets no pipeline.

Each image goes through exactly the calls of the one-image path (``detect_proposals`` of the
boxes ``selective_search`` gives), with one torch thread, so its detections equal
``detector.detect`` at one torch thread bit for bit. The one-image path at several torch threads
differs from itself at one thread by float rounding (convolutions and matrix products split
their sums by thread: scores 6e-8 apart, and 1 image of 200 with two near-tied detections in
the other order). Batching images into one forward does not pay here (``benchmarks/bench_frozen.py``,
part 4: the NoC over the RoIs of 2-8 images in one forward saved at most 0.3% of an image's CPU
work, and the pyramid levels of images of different sizes cannot share a batch), so a lane runs
one image at a time.

Failures stay per image: an image that cannot be loaded or detected is a result carrying its
exception and stage (``"load"`` or ``"detect"``), in its place in the order, and the others go
on. A dead worker process, Ctrl-C or an error of the caller ends the run: queued work is
cancelled, running work finishes, and the workers exit before the exception goes on (close the
iterator, ``contextlib.closing``, to end it early).

This module is imported by the worker processes (for their initializer): it imports no torch at
the top.
"""
from __future__ import annotations

import itertools
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np

from nocdet.data.sample import Detections
from nocdet.errors import ConfigError, NocdetError
from nocdet.proposals.selective_search import selective_search

Source = TypeVar("Source")


@dataclass
class ImageResult(Generic[Source]):
    """One image's outcome: its ``detections``, or the ``error`` that stopped it and the ``stage``
    (``"load"`` or ``"detect"``) it stopped at. ``image`` is the loaded array (None if loading failed)."""

    image_id: str
    source: Source
    image: np.ndarray | None
    detections: Detections | None
    error: Exception | None = None
    stage: str | None = None


class Detects(Protocol):
    """Any detector: one image at a time."""

    def detect(self, image: np.ndarray, image_id: str = "image") -> Detections: ...


@runtime_checkable
class ProposesWithSelectiveSearch(Protocol):
    """A detector whose ``detect`` is Selective Search then ``detect_proposals``: it can be pipelined."""

    def proposal_options(self) -> dict[str, Any]: ...

    def detect_proposals(self, image: np.ndarray, boxes: np.ndarray, image_id: str = "image") -> Detections: ...


def pipeline_split(threads: int, workers: int | None = None) -> tuple[int, int]:
    """``(Selective Search worker processes, lane threads)`` for a budget of ``threads`` CPUs.

    A lane per CPU, each one torch thread, and ``threads // 2`` workers (or ``workers``): none
    for one CPU, which gets no pipeline (``--threads 1`` is the choice for a busy machine, where
    a second busy process only slows the first). Workers run ahead only as far as the lanes
    consume, and every thread is single-threaded (no OpenMP team spin-waiting on a descheduled
    sibling), so a worker beside the lanes costs a context switch, not a stall. Measured side by
    side (``benchmarks/bench_frozen.py``, part 4; 2 CPUs, demo config, 200 images): 1 worker + 2
    lanes 1.63x the images/s of the faster one-image path, 2 + 2 1.59x, 1 + 1 (no more threads
    than CPUs) 1.23x: the lanes, not the workers, must fill the CPUs."""
    if workers is not None and workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    return (threads // 2 if workers is None else workers), max(1, threads)


def detect_images(detector: Detects, items: Sequence[tuple[str, Source]], load: Callable[[Source], np.ndarray],
                  workers: int | None = None) -> Iterator[ImageResult[Source]]:
    """Results of every ``(image id, source)`` of ``items`` (``load(source)`` gives its ``H x W x 3``
    uint8 RGB image), in their order: pipelined (module doc) for a detector that proposes with
    Selective Search and more than one image, with the split of :func:`pipeline_split` over
    this process's torch threads (``--threads``); one image at a time when ``workers`` is 0
    (the default with one thread).

    A ``workers`` count above 0 for a detector without Selective Search is a :class:`ConfigError`.
    """
    import torch  # not at the top: the worker processes import this module and need no torch

    pipelinable = isinstance(detector, ProposesWithSelectiveSearch)
    if workers and not pipelinable:
        raise ConfigError(f"workers={workers}: the workers run Selective Search, which this "
                          f"{type(detector).__name__} does not use (it proposes regions itself)")
    workers, _ = pipeline_split(torch.get_num_threads(), workers)
    if workers == 0 or len(items) < 2 or not pipelinable:
        return one_at_a_time(detector, items, load)
    return pipelined(detector, items, load, workers)


def one_at_a_time(detector: Detects, items: Sequence[tuple[str, Source]], load: Callable[[Source], np.ndarray]
                  ) -> Iterator[ImageResult[Source]]:
    """:func:`detect_images` without a pipeline: load, then ``detector.detect``, image by image."""
    for image_id, source in items:
        try:
            image = load(source)
        except Exception as err:  # handed to the caller, who decides what is fatal
            result = ImageResult(image_id, source, None, None, err, "load")
        else:
            try:
                result = ImageResult(image_id, source, image, detector.detect(image, image_id))
            except Exception as err:
                result = ImageResult(image_id, source, image, None, err, "detect")
        yield result


def pipelined(detector: ProposesWithSelectiveSearch, items: Sequence[tuple[str, Source]],
              load: Callable[[Source], np.ndarray], workers: int | None = None,
              lanes: int | None = None) -> Iterator[ImageResult[Source]]:
    """:func:`detect_images` through the pipeline of the module doc; ``workers`` and ``lanes``
    default to :func:`pipeline_split` of this process's torch threads (restored at the end), with
    at least one worker."""
    import torch

    threads = torch.get_num_threads()
    workers, default_lanes = pipeline_split(threads, workers)
    workers, lanes = max(1, workers), lanes or default_lanes
    options = detector.proposal_options()
    todo = iter(items)
    queue: deque[tuple[str, Source, np.ndarray | None, Exception | None, Future | None]] = deque()
    # 'spawn': fresh interpreters, safe beside this process's torch threads (or CUDA)
    proposers = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_init_worker)
    scorers = ThreadPoolExecutor(lanes, thread_name_prefix="nocdet-lane")
    torch.set_num_threads(1)  # before the first lane starts: each lane's ops run on its own thread
    try:
        while True:
            for image_id, source in itertools.islice(todo, 2 * (workers + lanes) - len(queue)):
                try:
                    image = load(source)
                except Exception as err:
                    queue.append((image_id, source, None, err, None))
                    continue
                boxes = proposers.submit(selective_search, image, **options)
                queue.append((image_id, source, image, None,
                              scorers.submit(_detect_proposals, detector, image, boxes, image_id)))
            if not queue:
                return
            image_id, source, image, error, done = queue.popleft()
            if error is not None:
                result = ImageResult(image_id, source, None, None, error, "load")
            else:
                try:
                    result = ImageResult(image_id, source, image, done.result())
                except BrokenProcessPool:
                    raise
                except Exception as err:
                    result = ImageResult(image_id, source, image, None, err, "detect")
            yield result
    except BrokenProcessPool as err:
        raise NocdetError(f"a Selective Search worker process died ({err}); rerun with --workers 0 to detect "
                          "in this process") from err
    finally:
        scorers.shutdown(wait=False, cancel_futures=True)  # queued images: never started
        proposers.shutdown(wait=True, cancel_futures=True)  # lanes waiting on a cancelled search end
        scorers.shutdown(wait=True)
        torch.set_num_threads(threads)


def _detect_proposals(detector: ProposesWithSelectiveSearch, image: np.ndarray, boxes: Future,
                      image_id: str) -> Detections:
    """A lane's task: wait for the image's Selective Search, then the rest of ``detect``."""
    return detector.detect_proposals(image, boxes.result(), image_id)


def _init_worker() -> None:
    """A Selective Search worker: one OpenCV thread; Ctrl-C is the parent's to handle (it shuts
    the pool down), not a traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
