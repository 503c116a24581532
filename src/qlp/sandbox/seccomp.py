"""The seccomp deny-list, as a classic-BPF program (bubblewrap) and as an OCI/Docker profile.

Why our own builder rather than libseccomp: the filter is a short deny-list (one arch check,
one comparison per syscall, one argument check for clone), which is easy to emit and to
verify instruction by instruction; libseccomp's Python bindings are tied to Debian's own
interpreter (not our venv) and the PyPI ctypes wrapper is unmaintained. The program is
checked by an interpreter in the unit tests and by the attack suite against the kernel.

Policy: syscalls that reach kernel attack surface or host-wide state are refused with EPERM
(tracing other processes, mounting, BPF, kexec, keyrings, perf, userfaultfd, module loading,
namespace creation, clock/host settings, io_uring, handle-based opens). clone is allowed
unless it asks for a new namespace; clone3, whose flags live in memory a filter cannot read,
answers ENOSYS so that the C library falls back to clone. socket and socketpair are allowed
for an allow-list of address families only (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK); every
other family is EPERM. That matters for AF_VSOCK above all: vsock ignores network namespaces,
so without this a sandbox could listen on the host's vsock ports or talk to the hypervisor.
Any other architecture (the i386 or x32 syscall tables on x86_64) is refused outright, since
the numbers below would not apply; that also closes i386's `socketcall`, the one way to
create a socket whose family a filter cannot see.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

from qlp.errors import SandboxError

# Names of syscalls refused with EPERM, in every architecture that has them.
DENIED: tuple[str, ...] = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "bpf",
    "kexec_load",
    "kexec_file_load",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "userfaultfd",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "sethostname",
    "setdomainname",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "vhangup",
    "quotactl",
    "lookup_dcookie",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "iopl",
    "ioperm",
    "uselib",
)

# clone() flags that create namespaces (sched.h): NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET.
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)

# Address families socket(2) and socketpair(2) may ask for (linux/socket.h); the rest: EPERM.
ALLOWED_FAMILIES: dict[str, int] = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
# Families the kernel could know of, now or soon (AF_MAX is 46 in Linux 6.x; the kernel itself
# answers EAFNOSUPPORT at AF_MAX and above). The OCI profile lists each one it refuses.
FAMILY_LIMIT = 64

# Syscall numbers (asm/unistd_64.h on x86_64; asm-generic/unistd.h on aarch64).
SYSCALLS_X86_64: dict[str, int] = {
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "pidfd_getfd": 438,
    "kcmp": 312,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "unshare": 272,
    "setns": 308,
    "bpf": 321,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "acct": 163,
    "settimeofday": 164,
    "clock_settime": 227,
    "clock_adjtime": 305,
    "adjtimex": 159,
    "syslog": 103,
    "vhangup": 153,
    "quotactl": 179,
    "lookup_dcookie": 212,
    "fanotify_init": 300,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "iopl": 172,
    "ioperm": 173,
    "uselib": 134,
    "clone": 56,
    "clone3": 435,
    "socket": 41,
    "socketpair": 53,
}

SYSCALLS_AARCH64: dict[str, int] = {
    "ptrace": 117,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "pidfd_getfd": 438,
    "kcmp": 272,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "chroot": 51,
    "move_mount": 429,
    "open_tree": 428,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "unshare": 97,
    "setns": 268,
    "bpf": 280,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "perf_event_open": 241,
    "userfaultfd": 282,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "open_by_handle_at": 265,
    "name_to_handle_at": 264,
    "swapon": 224,
    "swapoff": 225,
    "reboot": 142,
    "sethostname": 161,
    "setdomainname": 162,
    "acct": 89,
    "settimeofday": 170,
    "clock_settime": 112,
    "clock_adjtime": 266,
    "adjtimex": 171,
    "syslog": 116,
    "vhangup": 58,
    "quotactl": 60,
    "lookup_dcookie": 18,
    "fanotify_init": 262,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "clone": 220,
    "clone3": 435,
    "socket": 198,
    "socketpair": 199,
}

# Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# Offsets in struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (little-endian).
OFF_NR = 0
OFF_ARCH = 4
OFF_ARG0_LOW = 16

X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True)
class Arch:
    name: str
    audit_arch: int
    syscalls: dict[str, int]
    # On x86_64 the x32 ABI shares the audit arch and sets this bit in nr.
    x32_bit: bool


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", 0xC000003E, SYSCALLS_X86_64, x32_bit=True),
    "aarch64": Arch("aarch64", 0xC00000B7, SYSCALLS_AARCH64, x32_bit=False),
}


def host_arch() -> Arch:
    machine = platform.machine()
    arch = ARCHES.get({"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine))
    if arch is None:
        raise SandboxError(
            f"the sandbox's seccomp filter has no syscall table for this machine ({machine}); "
            "supported: x86_64, aarch64"
        )
    return arch


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int


def build_program(arch: Arch | None = None) -> list[Insn]:
    """The filter as a list of instructions (see the module doc for the policy)."""
    arch = arch or host_arch()
    denied = sorted({arch.syscalls[name] for name in DENIED if name in arch.syscalls})
    clone_nr = arch.syscalls["clone"]
    clone3_nr = arch.syscalls["clone3"]

    # Layout, with labels resolved to relative jumps below:
    #   0 ld arch; 1 jeq audit_arch ? next : KILL; 2 ld nr; [3 jge x32 ? EPERM : next]
    #   one jeq per denied nr -> EPERM; jeq clone -> CLONE; jeq clone3 -> ENOSYS;
    #   jeq socket / socketpair -> SOCKET; ret ALLOW
    #   CLONE: ld arg0; jset ns_flags ? EPERM : ALLOW
    #   SOCKET: ld arg0 (the family: an int, so its low word); jeq each allowed ? ALLOW; EPERM
    #   KILL / EPERM / ENOSYS / ALLOW returns
    head: list[tuple[int, str | int, str | int, int]] = [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 0, "kill", arch.audit_arch),
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
    ]
    if arch.x32_bit:
        head.append((BPF_JGE_K, "eperm", 0, X32_SYSCALL_BIT))
    head += [(BPF_JEQ_K, "eperm", 0, nr) for nr in denied]
    head += [
        (BPF_JEQ_K, "clone", 0, clone_nr),
        (BPF_JEQ_K, "enosys", 0, clone3_nr),
        (BPF_JEQ_K, "socket", 0, arch.syscalls["socket"]),
        (BPF_JEQ_K, "socket", 0, arch.syscalls["socketpair"]),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    labels: dict[str, int] = {}
    body = list(head)
    labels["clone"] = len(body)
    body += [
        (BPF_LD_W_ABS, 0, 0, OFF_ARG0_LOW),
        (BPF_JSET_K, "eperm", "allow", CLONE_NAMESPACE_FLAGS),
    ]
    labels["socket"] = len(body)
    body.append((BPF_LD_W_ABS, 0, 0, OFF_ARG0_LOW))
    body += [(BPF_JEQ_K, "allow", 0, family) for family in sorted(ALLOWED_FAMILIES.values())]
    body.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM))
    for name, ret in (
        ("kill", SECCOMP_RET_KILL_PROCESS),
        ("eperm", SECCOMP_RET_ERRNO | errno.EPERM),
        ("enosys", SECCOMP_RET_ERRNO | errno.ENOSYS),
        ("allow", SECCOMP_RET_ALLOW),
    ):
        labels[name] = len(body)
        body.append((BPF_RET_K, 0, 0, ret))

    program: list[Insn] = []
    for pc, (code, jt, jf, k) in enumerate(body):
        program.append(Insn(code, _offset(pc, jt, labels), _offset(pc, jf, labels), k))
    return program


def _offset(pc: int, target: str | int, labels: dict[str, int]) -> int:
    if isinstance(target, int):
        return target
    off = labels[target] - pc - 1
    if not 0 <= off <= 255:
        raise AssertionError(f"BPF jump out of range: {off}")
    return off


def compile_program(program: list[Insn]) -> bytes:
    """struct sock_filter[] in native byte order, as bwrap's --seccomp FD expects."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)


def bpf_bytes() -> bytes:
    return compile_program(build_program())


def oci_profile(arch: Arch | None = None, *, clone3: bool = False) -> dict[str, object]:
    """The same policy as a Docker / OCI seccomp profile (default allow, listed denied).

    `clone3=True` leaves clone3 alone instead of answering ENOSYS: gVisor's runsc applies the
    profile inside its own kernel, ignores `errnoRet` (answering EPERM, on which the C library
    does not fall back to clone, so no program could start a thread), and a namespace made
    there is gVisor's, not the host's."""
    arch = arch or host_arch()
    scmp_arch = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}[arch.name]
    names = [name for name in DENIED if name in arch.syscalls]
    rules: list[dict[str, object]] = [
        {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
    ]
    if not clone3:
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    # Families outside the allow-list, one rule each (a rule's conditions are ANDed, so a range
    # cannot be one rule). The mask keeps the comparison to the int's 32 bits, as the kernel
    # reads it: a family with junk in the upper half is still the family.
    refused = [f for f in range(FAMILY_LIMIT) if f not in ALLOWED_FAMILIES.values()]
    for family in refused:
        rules.append(
            {
                "names": ["socket", "socketpair"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EPERM,
                "args": [
                    {
                        "index": 0,
                        "value": 0xFFFFFFFF,
                        "valueTwo": family,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            }
        )
    # "deny clone when any namespace flag is set": one masked comparison per flag.
    flag = 1
    while flag <= CLONE_NAMESPACE_FLAGS:
        if CLONE_NAMESPACE_FLAGS & flag:
            rules.append(
                {
                    "names": ["clone"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": errno.EPERM,
                    "args": [
                        {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}
                    ],
                }
            )
        flag <<= 1
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [scmp_arch], "syscalls": rules}
