"""Shared pieces of the benchmark tools (benchmark.py, benchmark_detector.py): the peak memory of a
code span, the markdown table and the JSON output. The tools import it as a sibling module (``from bench_utils import ...``);
torch is imported only where CUDA memory is read, so a benchmark's parent process stays light."""
from __future__ import annotations

import json
from typing import Callable


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``, ...); RuntimeError where there is none."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not found in /proc/self/status (the CPU memory column needs Linux)')


def reset_peak_rss() -> int:
    """Reset the process's peak RSS (VmHWM) to the current RSS; return the current RSS in KiB."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return proc_status_kib('VmRSS')


class PeakMemory:
    """Peak memory of the code in a ``with PeakMemory(cuda) as peak:`` block; ``peak.mib`` after it.

    CUDA (``cuda=True``): ``torch.cuda.max_memory_allocated`` (absolute: everything allocated,
    weights included), its statistics reset on entry. CPU: the growth of the process's peak resident
    set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` on entry) over the RSS at
    entry, i.e. what the block adds on top of what was already resident.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.mib: float | None = None
        self._rss_before_kib = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch
            torch.cuda.reset_peak_memory_stats()
        else:
            self._rss_before_kib = reset_peak_rss()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.cuda:
            import torch
            self.mib = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            self.mib = (proc_status_kib('VmHWM') - self._rss_before_kib) / 1024


def write_json(rows: list[dict], path: str) -> None:
    """Write the result rows as an indented JSON list to ``path`` and say so on stdout."""
    with open(path, 'w') as f:
        json.dump(rows, f, indent=2)
    print(f'wrote {path}')


def markdown_lines(columns: list[str], rows: list[dict], cells: Callable[[dict], list[str]],
                   error_cells: Callable[[dict], list[str]]) -> list[str]:
    """A markdown table as lines: the header of ``columns``, the separator, then a line per row:
    ``cells(row)`` (a string per column), or for a row with an ``error`` key ``error_cells(row)``
    (the columns that name it), ``n/a (<error>)`` and empty cells."""
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for row in rows:
        if 'error' in row:
            named = [*error_cells(row), f"n/a ({row['error']})"]
            lines.append('| ' + ' | '.join(named) + ' |' + ' |' * (len(columns) - len(named)))
        else:
            lines.append('| ' + ' | '.join(cells(row)) + ' |')
    return lines
