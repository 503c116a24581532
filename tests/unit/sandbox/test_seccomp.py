"""The seccomp filter, run instruction by instruction in a small classic-BPF interpreter."""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

from qlp.sandbox import seccomp
from qlp.sandbox.seccomp import (
    ALLOWED_FAMILIES,
    ARCHES,
    BPF_JEQ_K,
    BPF_JGE_K,
    BPF_JSET_K,
    BPF_LD_W_ABS,
    BPF_RET_K,
    CLONE_NAMESPACE_FLAGS,
    DENIED,
    FAMILY_LIMIT,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    Insn,
)

ALLOW = SECCOMP_RET_ALLOW
EPERM = SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS
AF_VSOCK = 40


def run_bpf(program: list[Insn], nr: int, arch: int, arg0: int = 0) -> int:
    """Evaluate a seccomp program against one struct seccomp_data (little-endian)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    acc = 0
    pc = 0
    for _ in range(10_000):
        insn = program[pc]
        if insn.code == BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, insn.k)[0]
            pc += 1
        elif insn.code in (BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K):
            taken = {
                BPF_JEQ_K: acc == insn.k,
                BPF_JGE_K: acc >= insn.k,
                BPF_JSET_K: bool(acc & insn.k),
            }[insn.code]
            pc += 1 + (insn.jt if taken else insn.jf)
        elif insn.code == BPF_RET_K:
            return insn.k
        else:
            raise AssertionError(f"unexpected opcode {insn.code:#x}")
    raise AssertionError("program did not terminate")


@pytest.fixture(params=sorted(ARCHES))
def arch(request: pytest.FixtureRequest) -> seccomp.Arch:
    return ARCHES[request.param]


def test_every_denied_syscall_gets_eperm(arch: seccomp.Arch) -> None:
    program = seccomp.build_program(arch)
    for name in DENIED:
        if name in arch.syscalls:
            assert run_bpf(program, arch.syscalls[name], arch.audit_arch) == EPERM, name


def test_ordinary_syscalls_are_allowed(arch: seccomp.Arch) -> None:
    program = seccomp.build_program(arch)
    denied = {arch.syscalls[n] for n in DENIED if n in arch.syscalls}
    special = {arch.syscalls[n] for n in ("clone", "clone3", "socket", "socketpair")}
    allowed = [nr for nr in range(0, 460) if nr not in denied | special]
    assert allowed
    for nr in allowed:
        assert run_bpf(program, nr, arch.audit_arch) == ALLOW, nr


def test_clone_is_allowed_unless_it_asks_for_a_namespace(arch: seccomp.Arch) -> None:
    program = seccomp.build_program(arch)
    clone = arch.syscalls["clone"]
    plain_fork_flags = 0x01200011  # CHILD_SETTID | CHILD_CLEARTID | SIGCHLD
    thread_flags = 0x003D0F00
    assert run_bpf(program, clone, arch.audit_arch, plain_fork_flags) == ALLOW
    assert run_bpf(program, clone, arch.audit_arch, thread_flags) == ALLOW
    flag = 1
    while flag <= CLONE_NAMESPACE_FLAGS:
        if flag & CLONE_NAMESPACE_FLAGS:
            assert run_bpf(program, clone, arch.audit_arch, flag | 0x11) == EPERM, hex(flag)
        flag <<= 1


def test_clone3_answers_enosys_so_libc_falls_back(arch: seccomp.Arch) -> None:
    program = seccomp.build_program(arch)
    assert run_bpf(program, arch.syscalls["clone3"], arch.audit_arch) == ENOSYS


def test_sockets_only_for_the_allowed_families(arch: seccomp.Arch) -> None:
    program = seccomp.build_program(arch)
    allowed = set(ALLOWED_FAMILIES.values())
    for name in ("socket", "socketpair"):
        nr = arch.syscalls[name]
        for family in range(0, 300):
            want = ALLOW if family in allowed else EPERM
            assert run_bpf(program, nr, arch.audit_arch, family) == want, (name, family)
        # The family is an int: junk in the upper half does not change what the kernel reads.
        assert run_bpf(program, nr, arch.audit_arch, (1 << 32) | 2) == ALLOW
        assert run_bpf(program, nr, arch.audit_arch, (1 << 32) | AF_VSOCK) == EPERM
        assert run_bpf(program, nr, arch.audit_arch, 0xFFFFFFFF) == EPERM


def test_foreign_architectures_are_killed() -> None:
    program = seccomp.build_program(ARCHES["x86_64"])
    i386 = 0x40000003
    assert run_bpf(program, 0, i386) == SECCOMP_RET_KILL_PROCESS


def test_x32_syscalls_are_refused() -> None:
    arch = ARCHES["x86_64"]
    program = seccomp.build_program(arch)
    assert run_bpf(program, 0x40000000 | 1, arch.audit_arch) == EPERM
    assert run_bpf(program, 1, arch.audit_arch) == ALLOW


def test_compiled_program_is_sock_filter_array() -> None:
    program = seccomp.build_program(ARCHES["x86_64"])
    raw = seccomp.compile_program(program)
    assert len(raw) == 8 * len(program)
    assert len(program) < 4096  # BPF_MAXINSNS
    code, jt, jf, k = struct.unpack_from("=HBBI", raw, 8)
    assert (code, jt, jf, k) == (program[1].code, program[1].jt, program[1].jf, program[1].k)


@pytest.mark.parametrize(
    ("header", "arch"),
    [
        ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "x86_64"),
        ("/usr/include/asm-generic/unistd.h", "aarch64"),
    ],
)
def test_syscall_numbers_match_kernel_headers(header: str, arch: str) -> None:
    path = Path(header)
    if not path.exists():
        pytest.skip(f"{header} not installed")
    text = path.read_text()
    for name, nr in ARCHES[arch].syscalls.items():
        match = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)", text)
        assert match is not None, name
        assert int(match.group(1)) == nr, name


def test_oci_profile_expresses_the_same_policy() -> None:
    profile = seccomp.oci_profile(ARCHES["x86_64"])
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    rules = profile["syscalls"]
    assert isinstance(rules, list)
    denied = rules[0]
    assert set(denied["names"]) == {n for n in DENIED if n in ARCHES["x86_64"].syscalls}
    assert denied["errnoRet"] == errno.EPERM
    assert rules[1] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}
    clone = [r for r in rules if r["names"] == ["clone"]]
    assert sum(r["args"][0]["value"] for r in clone) == CLONE_NAMESPACE_FLAGS
    sockets = [r for r in rules if r["names"] == ["socket", "socketpair"]]
    assert all(r["args"][0]["value"] == 0xFFFFFFFF for r in sockets)
    assert all(r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for r in sockets)
    refused = {r["args"][0]["valueTwo"] for r in sockets}
    assert refused == set(range(FAMILY_LIMIT)) - set(ALLOWED_FAMILIES.values())
    assert AF_VSOCK in refused


def test_gvisor_profile_leaves_clone3_to_gvisor() -> None:
    rules = seccomp.oci_profile(ARCHES["x86_64"], clone3=True)["syscalls"]
    assert isinstance(rules, list)
    assert not [r for r in rules if "clone3" in r["names"]]
