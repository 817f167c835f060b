"""CPU time and resident memory of process trees, read from /proc (Linux only)."""

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    # The command name is in parentheses and may contain spaces: split after its closing one.
    return raw[raw.rindex(b")") + 2:].split()


def children_map():
    """{parent pid: [child pids]} of every process on the machine."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    return children


def tree(pid, children=None):
    """``pid`` and all its descendants (a gunicorn master and its workers, nginx and its workers)."""
    children = children_map() if children is None else children
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children.get(current, ()))
    return pids


def cpu_seconds(pids):
    """utime + stime, including the waited-for children, summed over ``pids`` (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        # Fields 14-17 of stat(5) (utime, stime, cutime, cstime); index 0 here is field 3.
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as handle:
                for line in handle:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return total


class Group:
    """A named process tree whose CPU and RSS are sampled together (descendants re-read each time)."""

    def __init__(self, name, root_pid):
        self.name = name
        self.root_pid = root_pid

    def pids(self, children=None):
        if not os.path.exists(f"/proc/{self.root_pid}"):
            return []
        return tree(self.root_pid, children)


def sample(groups):
    """{name: {"cpu": seconds, "rss": bytes, "pids": [...]}} for each group, one /proc scan."""
    children = children_map()
    out = {}
    for group in groups:
        pids = group.pids(children)
        out[group.name] = {"cpu": cpu_seconds(pids), "rss": rss_bytes(pids), "pids": pids}
    return out
