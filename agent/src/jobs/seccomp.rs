//! The seccomp filter every job runs under: an allowlist, so a system call the list does not name
//! (including every one added to the kernel after it was written) fails with `EPERM`.
//!
//! The list is Docker's default profile (moby `profiles/seccomp/default.json`) as it applies to
//! a container with no capabilities, which is what a job is: the calls Docker allows only to a
//! holder of some capability (`mount`, `unshare`, `setns`, `bpf`, `perf_event_open`, module
//! loading, clock setting, NUMA policy...) are refused, and so are the ones it never allows
//! (the kernel keyring, `userfaultfd`, `kexec_load`...). Most would fail anyway without the
//! capability; the filter is for the calls that need none and reach much kernel code: creating
//! user namespaces (`unshare` or `clone` with namespace flags — a user namespace hands back every
//! capability inside it), `userfaultfd`, the keyring, AF_VSOCK sockets, unusual `personality`
//! modes. CUDA, PyTorch and MPI workloads already run under this list in Docker.
//!
//! One difference from that profile: `io_uring_setup`, `io_uring_enter` and `io_uring_register`
//! are not allowed (recent Docker releases refuse them too): io_uring has been the source of a
//! long run of local privilege escalations and is turned off on many production fleets. Most
//! programs that can use it fall back to ordinary I/O when its setup fails.
//!
//! Details that matter:
//! - Only the native ABI is in the filter (x86-64, or AArch64). A call through a compat ABI (a
//!   32-bit i386 or x32 binary, `int 0x80`) kills the process with `SIGSYS` (exit status 159),
//!   which is libseccomp's answer for an architecture the filter does not list (checked with
//!   runc 1.1.5 and a static program making an i386 `getpid`). Docker lists the compat ABIs
//!   too; here each one would add 7-10 ms to every container start (runc compiles the list once
//!   per ABI: `runc run -d` p50 44.5 ms without a filter, 49.7 native only, 59.6 with i386,
//!   24 alternating runs), CUDA has had no 32-bit runtime for years, and the compat entry points
//!   are kernel code a job does not need. The native filter itself costs 3-10 ms per start
//!   (agent/DAEMON.md).
//! - `clone3` answers `ENOSYS`, not `EPERM`: its flags sit in memory a filter cannot read, and
//!   `ENOSYS` makes glibc and musl fall back to `clone`, whose flags the filter does check.
//! - runc answers `ENOSYS` for calls newer than any the profile names, so libraries that probe
//!   for new calls take their fallback.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::JobError;

/// `errno` of a call the filter refuses.
const EPERM: u32 = 1;
/// `errno` of `clone3`, so the C libraries fall back to `clone`.
const ENOSYS: u32 = 38;
/// `AF_VSOCK`: sockets to the hypervisor; refused, every other family is allowed.
const AF_VSOCK: u64 = 40;
/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET`: a `clone` with any of these set is refused.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// The `personality` values allowed: `PER_LINUX`, `PER_LINUX32`, `UNAME26`, `PER_LINUX32 |
/// UNAME26`, and `0xffffffff` (the query).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Calls allowed whatever their arguments.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
    "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv",
    "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep",
    "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile",
    "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr",
    "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4",
    "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64",
    "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid",
    "waitpid", "write", "writev",
    // Debuggers and profilers (gdb, py-spy) inside the job. The pid namespace keeps them to the
    // job's own processes, and the kernel's ptrace rules apply (Docker allows these on kernels
    // >= 4.8, where seccomp can no longer be bypassed through ptrace).
    "ptrace", "process_vm_readv", "process_vm_writev",
];

/// Calls of one architecture family, allowed whatever their arguments.
#[cfg(target_arch = "x86_64")]
const ARCH_ALLOWED: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ARCH_ALLOWED: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_ALLOWED: &[&str] = &[];

/// The one ABI the filter admits: the native one.
fn native_architecture() -> Arch {
    if cfg!(target_arch = "x86_64") {
        Arch::ScmpArchX86_64
    } else if cfg!(target_arch = "aarch64") {
        Arch::ScmpArchAarch64
    } else {
        Arch::ScmpArchNative
    }
}

fn build_err(err: oci_spec::OciSpecError) -> JobError {
    JobError::Bundle(format!("cannot build the seccomp profile: {err}"))
}

fn allow(names: &[&str]) -> Result<LinuxSyscall, JobError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .map_err(build_err)
}

/// Allows `name` when its argument `index` compares to `value` by `op` (`value_two` is the
/// mask's operand for [`LinuxSeccompOperator::ScmpCmpMaskedEq`]).
fn allow_if(
    name: &str,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSyscall, JobError> {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(two) = value_two {
        arg = arg.value_two(two);
    }
    LinuxSyscallBuilder::default()
        .names(vec![name.to_owned()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg.build().map_err(build_err)?])
        .build()
        .map_err(build_err)
}

/// The profile, for `linux.seccomp` of a job's runtime spec.
pub fn job_profile() -> Result<LinuxSeccomp, JobError> {
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq, ScmpCmpNe};
    let mut syscalls = vec![allow(ALLOWED)?];
    if !ARCH_ALLOWED.is_empty() {
        syscalls.push(allow(ARCH_ALLOWED)?);
    }
    syscalls.push(allow_if("socket", 0, ScmpCmpNe, AF_VSOCK, None)?);
    for persona in PERSONALITIES {
        syscalls.push(allow_if("personality", 0, ScmpCmpEq, persona, None)?);
    }
    // s390 passes clone's flags second; elsewhere they come first.
    let clone_flags_index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
    // libseccomp's masked compare: (arg & value) == value_two.
    syscalls.push(allow_if(
        "clone",
        clone_flags_index,
        ScmpCmpMaskedEq,
        CLONE_NAMESPACE_FLAGS,
        Some(0),
    )?);
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build()
            .map_err(build_err)?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(vec![native_architecture()])
        .syscalls(syscalls)
        .build()
        .map_err(build_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<serde_json::Value> {
        let profile = serde_json::to_value(job_profile().unwrap()).unwrap();
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(profile["defaultErrnoRet"], EPERM);
        assert_eq!(profile["architectures"].as_array().unwrap().len(), 1);
        profile["syscalls"].as_array().unwrap().clone()
    }

    fn allowed_unconditionally(rules: &[serde_json::Value], name: &str) -> bool {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r.get("args").is_none()
                && r["names"].as_array().unwrap().iter().any(|n| n == name)
        })
    }

    #[test]
    fn calls_that_need_no_capability_but_open_the_kernel_are_refused() {
        let rules = rules();
        for name in [
            "unshare",
            "setns",
            "mount",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "bpf",
            "perf_event_open",
            "io_uring_setup",
            "io_uring_enter",
            "kexec_load",
            "init_module",
            "clone",
            "socket",
            "personality",
        ] {
            assert!(!allowed_unconditionally(&rules, name), "{name}");
        }
        for name in ["read", "execve", "futex", "mmap", "ptrace", "arch_prctl"] {
            assert!(allowed_unconditionally(&rules, name), "{name}");
        }
    }

    #[test]
    fn clone_without_namespace_flags_socket_without_vsock_clone3_falls_back() {
        let rules = rules();
        let clone = rules.iter().find(|r| r["names"][0] == "clone").unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
        let socket = rules.iter().find(|r| r["names"][0] == "socket").unwrap();
        assert_eq!(socket["args"][0]["op"], "SCMP_CMP_NE");
        assert_eq!(socket["args"][0]["value"], AF_VSOCK);
        let clone3 = rules.iter().find(|r| r["names"][0] == "clone3").unwrap();
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], ENOSYS);
    }

    #[test]
    fn every_name_is_listed_once() {
        let mut all: Vec<&str> = ALLOWED.iter().chain(ARCH_ALLOWED).copied().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }
}
