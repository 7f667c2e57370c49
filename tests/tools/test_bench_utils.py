"""bench_utils.PeakMemory on the CPU: the peak RSS growth of a block against allocations of known size."""
import numpy as np
import pytest

from tool_loader import load_tool

bench_utils = load_tool('analysis/bench_utils')


@pytest.mark.parametrize('mib', [32, 96])
def test_peak_rss_growth_of_a_known_allocation(mib):
    with bench_utils.PeakMemory(cuda=False) as peak:
        buf = np.ones(mib * 2 ** 20, dtype=np.uint8)  # every page touched
        del buf
    # the buffer is freed inside the block: only the peak can see it
    assert mib - 1 <= peak.mib <= mib + 8, peak.mib


def test_peak_rss_growth_of_an_idle_block_is_near_zero():
    # A block that allocates nothing grows the peak by ~0. The kernel's RSS counters are approximate
    # by a few pages, so the growth can come out slightly negative: it is checked as a small number,
    # not as a sign.
    with bench_utils.PeakMemory(cuda=False) as peak:
        pass
    assert abs(peak.mib) < 1.0, peak.mib
