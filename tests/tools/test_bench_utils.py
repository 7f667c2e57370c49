"""bench_utils.PeakMemory on the CPU: the peak RSS growth of a block against allocations of known size."""
import mmap

import numpy as np
import pytest

from tool_loader import load_tool

bench_utils = load_tool('analysis/bench_utils')


@pytest.mark.parametrize('mib', [32, 96])
def test_peak_rss_growth_of_a_known_allocation(mib):
    # Fresh anonymous pages (mmap), not the allocator's: memory that earlier tests freed can stay resident
    # in this process's heap, and an allocation served from it does not grow the RSS.
    with bench_utils.PeakMemory(cuda=False) as peak:
        with mmap.mmap(-1, mib * 2 ** 20) as buf:
            np.frombuffer(buf, dtype=np.uint8)[:] = 1  # touch every page
    # the pages are unmapped inside the block: only the peak can see them
    assert mib - 1 <= peak.mib <= mib + 8, peak.mib


def test_peak_rss_growth_of_an_idle_block_is_near_zero():
    # A block that allocates nothing grows the peak by ~0. The kernel's RSS counters are approximate
    # by a few pages, so the growth can come out slightly negative: it is checked as a small number,
    # not as a sign.
    with bench_utils.PeakMemory(cuda=False) as peak:
        pass
    assert abs(peak.mib) < 1.0, peak.mib
