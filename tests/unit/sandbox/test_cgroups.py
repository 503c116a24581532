"""cgroup handling against a fake cgroup filesystem (plain directories and files)."""

from __future__ import annotations

from pathlib import Path

from qlp.sandbox.cgroups import CgroupManager


def _v1(tmp_path: Path) -> tuple[Path, Path]:
    mounts = tmp_path / "mounts"
    own = tmp_path / "cgroup"
    lines = []
    for ctrl in ("cpu,cpuacct", "memory", "pids"):
        d = tmp_path / "fs" / ctrl
        d.mkdir(parents=True)
        lines.append(f"cgroup {d} cgroup rw,relatime,{ctrl} 0 0")
    mounts.write_text("\n".join(lines) + "\n")
    (tmp_path / "fs" / "memory" / "svc").mkdir()
    own.write_text("5:pids:/\n4:memory:/svc\n2:cpu,cpuacct:/\n0::/\n")
    return mounts, own


def test_v1_nests_below_our_own_cgroup_and_sets_limits(tmp_path: Path) -> None:
    mounts, own = _v1(tmp_path)
    mgr, why = CgroupManager.detect(mounts, own)
    assert mgr is not None, why
    assert mgr.version == 1
    assert mgr.bases["memory"] == tmp_path / "fs" / "memory" / "svc"
    group = mgr.create("t")
    assert group.dirs["cpu"] == group.dirs["cpuacct"]  # co-mounted: one directory
    group.set_limits(64 << 20, 40, 0.5)
    assert (group.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (group.dirs["pids"] / "pids.max").read_text() == "40"
    assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "50000"
    (group.dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\noom_kill 2\n")
    (group.dirs["pids"] / "pids.events").write_text("max 7\n")
    (group.dirs["memory"] / "memory.max_usage_in_bytes").write_text("12345\n")
    (group.dirs["cpu"] / "cpuacct.usage").write_text("1500000000\n")
    stats = group.stats()
    assert (stats.oom_kills, stats.pids_refused, stats.peak_memory_bytes) == (2, 7, 12345)
    assert stats.cpu_s == 1.5


def test_v2_reads_its_counters(tmp_path: Path) -> None:
    fs = tmp_path / "unified"
    (fs / "app").mkdir(parents=True)
    (fs / "app" / "cgroup.subtree_control").write_text("memory pids cpu\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {fs} cgroup2 rw 0 0\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/app\n")
    mgr, why = CgroupManager.detect(mounts, own)
    assert mgr is not None, why
    assert mgr.version == 2
    group = mgr.create("t")
    group.set_limits(32 << 20, 10, 2.0)
    d = group.dirs["unified"]
    assert (d / "memory.max").read_text() == str(32 << 20)
    assert (d / "cpu.max").read_text() == "200000 100000"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (d / "pids.events").write_text("max 0\n")
    (d / "cpu.stat").write_text("usage_usec 250000\nuser_usec 1\n")
    stats = group.stats()
    assert (stats.oom_kills, stats.pids_refused, stats.cpu_s) == (1, 0, 0.25)


def test_v2_without_delegated_controllers_is_reported(tmp_path: Path) -> None:
    fs = tmp_path / "unified"
    (fs / "app").mkdir(parents=True)
    (fs / "app" / "cgroup.subtree_control").mkdir()  # writing to it fails
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {fs} cgroup2 rw 0 0\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/app\n")
    mgr, why = CgroupManager.detect(mounts, own)
    assert mgr is None
    assert "not delegated" in why


def test_nothing_mounted(tmp_path: Path) -> None:
    (tmp_path / "mounts").write_text("proc /proc proc rw 0 0\n")
    (tmp_path / "cgroup").write_text("")
    mgr, why = CgroupManager.detect(tmp_path / "mounts", tmp_path / "cgroup")
    assert mgr is None
    assert "no cgroup" in why


def test_sweep_removes_only_the_cgroups_of_dead_owners(tmp_path: Path) -> None:
    import os
    import subprocess

    mounts, own = _v1(tmp_path)
    mgr, why = CgroupManager.detect(mounts, own)
    assert mgr is not None, why
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = f"qlp-sbx-run-{os.getpid()}-0123abcd"
    theirs = f"qlp-sbx-gvisor-{dead.pid}-89abcdef"
    unrelated = "something-else"
    for base in set(mgr.bases.values()):
        for name in (mine, theirs, unrelated):
            (base / name).mkdir()
    assert mgr.sweep() == [theirs]
    for base in set(mgr.bases.values()):
        assert (base / mine).is_dir() and (base / unrelated).is_dir()
        assert not (base / theirs).exists()
    assert f"-{os.getpid()}-" in mgr.create("t").dirs["memory"].name
