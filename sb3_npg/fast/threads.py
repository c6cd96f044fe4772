"""
The timed choice of torch's intra-op thread count for the fast paths' large batch products, inside ``learn()`` with
``num_threads=None``.

``learn()`` runs torch at one thread (docs/performance.md, "Threads"): NPG's tensors are small, and with more threads
every operation ends at an OpenMP barrier which, when another process holds a core, waits a scheduler time slice
(a product then costs 5-10 times as long). Only a large network's products over the whole batch (256x256 layers on
thousands of samples) are faster on several threads, and only on an idle machine (1.75x for two threads on the VM
measured). :func:`large_product` runs such a product (work = rows x multiply-adds per row of at least
:data:`MIN_WORK`, and at least :data:`MIN_WORK_PER_ROW` per row, so SB3-sized 64x64 networks never qualify) either
at one thread or at the caller's thread count, by a choice timed for each kind of product (:class:`KindChoice`):

- every kind starts at one thread; its first product sets the one-thread reference (the least one-thread time seen);
- the multi-thread way is tried (a probe) and kept while it takes less than :data:`SWITCH_RATIO` of the reference;
- a multi-thread product slower than :data:`SLOWDOWN_RATIO` times the reference (another process took a core: a
  product then costs 5-10 times as long) switches that kind back to one thread at once, and so does a moving average
  of its multi-thread times above the reference (a lasting smaller slowdown); one noisy product does neither;
- a losing probe doubles the products before that kind's next one (up to :data:`MAX_PROBE_SPACING`), a winning one
  resets the spacing, so one noisy sample on an idle machine delays the faster way by a few products only;
- and all probes together may lose at most :data:`PROBE_BUDGET` of the time spent in large products (their loss is
  what they took beyond the one-thread reference): under load a probe costs several products' time, so the next one
  waits until the run has earned it.

The results of a product depend on the thread count by float rounding only (torch splits a matrix product
differently), about 1e-6 relative, which a seeded run then carries on: with a large network and ``num_threads=None``
two runs of the same seed may differ; ``num_threads=1`` (or any int) does not time and does not switch.

The choice lives for one ``learn()`` call (:func:`timed_threads`), in a :class:`~contextvars.ContextVar` (each
thread calling ``learn()`` has its own), so nothing is stored on the model.
"""

import contextlib
import contextvars
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

import torch as th

#: The least work (batch rows x multiply-adds per row) of a product whose thread count is timed and chosen. On the
#: 2-core VM measured (docs/performance.md), two threads took 0.58x the time of one for a 256x256 chain's products
#: from 512 rows (37e6 multiply-adds) up, 0.78x at 128 rows (9e6, the critic's minibatches)
MIN_WORK = 8_000_000
#: The least multiply-adds per row (a chain's sum of ``in x out``): SB3's 64x64 networks (4,000-6,000 on the usual
#: observations) stay at one thread whatever the batch size, bit for bit as with ``num_threads=1``
MIN_WORK_PER_ROW = 32_768
#: The multi-thread way is taken when a probe takes less than this fraction of the one-thread reference
SWITCH_RATIO = 0.9
#: On the multi-thread way, one product slower than this times the one-thread reference switches back to one thread
SLOWDOWN_RATIO = 1.5
#: The weight of the newest product in the moving average of the multi-thread times (it switches back to one thread
#: when the average exceeds the one-thread reference)
MULTI_WEIGHT = 0.25
#: The most the products before a kind's next probe grow to, after losing probes
MAX_PROBE_SPACING = 256
#: The most all losing probes together may cost, as a fraction of the time spent in large products
PROBE_BUDGET = 0.03


@dataclass
class KindChoice:
    """
    The thread choice of one kind of product (products of one kind cost the same): the least one-thread time seen,
    the moving average of the multi-thread times since the last probe, whether it runs multi-threaded now, and when
    it may next try multi-threaded.
    """

    single_seconds: float | None = None
    multi_seconds: float | None = None
    on_multi: bool = False
    probe_spacing: int = 1
    products_to_probe: int = 1


@dataclass
class ThreadChooser:
    """
    The choices of one ``learn()`` call: ``multi_threads`` (the caller's thread count) or 1 for each kind of large
    product, and the time spent and lost by probes, shared by all kinds.

    :param multi_threads: the thread count of the multi-thread way (>= 2)
    """

    multi_threads: int
    kinds: dict[Hashable, KindChoice] = field(default_factory=dict)
    #: The time spent in large products, and what the losing probes cost beyond the one-thread reference
    seconds_spent: float = 0.0
    seconds_lost: float = 0.0
    #: Whether a timed product is running (one inside it is not timed apart)
    in_product: bool = False

    def choose_multi(self, kind: Hashable) -> bool:
        """Whether the next product of ``kind`` runs at ``multi_threads``."""
        choice = self.kinds.setdefault(kind, KindChoice())
        if choice.on_multi:
            return True
        if choice.single_seconds is None:  # the one-thread reference first
            return False
        choice.products_to_probe -= 1
        return choice.products_to_probe <= 0 and self.seconds_lost <= PROBE_BUDGET * self.seconds_spent

    def record(self, kind: Hashable, multi: bool, seconds: float) -> None:
        """Take one product's time (as :meth:`choose_multi` chose its way) into the choice of its kind."""
        choice = self.kinds[kind]
        self.seconds_spent += seconds
        if not multi:
            choice.single_seconds = seconds if choice.single_seconds is None else min(choice.single_seconds, seconds)
            return
        assert choice.single_seconds is not None
        self.seconds_lost += max(0.0, seconds - choice.single_seconds)
        was_on_multi = choice.on_multi
        if was_on_multi:
            assert choice.multi_seconds is not None
            choice.multi_seconds += MULTI_WEIGHT * (seconds - choice.multi_seconds)
            choice.on_multi = seconds < SLOWDOWN_RATIO * choice.single_seconds and choice.multi_seconds < choice.single_seconds
        else:
            choice.multi_seconds = seconds
            choice.on_multi = seconds < SWITCH_RATIO * choice.single_seconds
        if choice.on_multi:
            choice.probe_spacing = 1
        elif was_on_multi:  # a slowdown: back to one thread at once, and soon tried again (within the budget)
            choice.probe_spacing = 1
            choice.products_to_probe = 1
        else:  # a losing probe
            choice.probe_spacing = min(2 * choice.probe_spacing, MAX_PROBE_SPACING)
            choice.products_to_probe = choice.probe_spacing


_current_chooser: contextvars.ContextVar[ThreadChooser | None] = contextvars.ContextVar("sb3_npg_thread_chooser", default=None)


@contextlib.contextmanager
def timed_threads(enabled: bool = True) -> Iterator[None]:
    """
    Inside the block, :func:`large_product` chooses each large product's thread count between 1 and the thread
    count torch has when the block is entered (the caller's: its own setting, ``OMP_NUM_THREADS``, or torch's
    default of one per core), if ``enabled`` and that count is at least 2; otherwise the products run as they are.
    ``learn()`` enters it before setting torch to one thread.

    :param enabled: ``False``: the block runs as if outside
    """
    multi_threads = th.get_num_threads()
    chooser = ThreadChooser(multi_threads) if enabled and multi_threads >= 2 else None
    token = _current_chooser.set(chooser)
    try:
        yield
    finally:
        _current_chooser.reset(token)


def current_chooser() -> ThreadChooser | None:
    """The choices of the enclosing :func:`timed_threads` block (``None`` outside one, or when disabled)."""
    return _current_chooser.get()


@contextlib.contextmanager
def large_product(name: str, rows: int, work_per_row: int) -> Iterator[None]:
    """
    Run the block (one batch product) at the thread count chosen for its kind, ``(name, rows, work_per_row)``, and
    time it; unchanged outside :func:`timed_threads` and below :data:`MIN_WORK` or :data:`MIN_WORK_PER_ROW`. The
    thread count is set back afterwards (also on an error, which is not timed).

    :param name: the product (e.g. ``"jvp"``)
    :param rows: the batch size
    :param work_per_row: the product's multiply-adds per row
    """
    chooser = _current_chooser.get()
    if chooser is None or chooser.in_product or work_per_row < MIN_WORK_PER_ROW or rows * work_per_row < MIN_WORK:
        yield  # a product inside a timed one runs at that one's thread count
        return
    kind = (name, rows, work_per_row)
    multi = chooser.choose_multi(kind)
    started = time.perf_counter()
    previous = th.get_num_threads()
    if multi:
        th.set_num_threads(chooser.multi_threads)
    chooser.in_product = True
    try:
        yield
    finally:
        chooser.in_product = False
        if multi:
            th.set_num_threads(previous)
    chooser.record(kind, multi, time.perf_counter() - started)
