/*
 * Simulated libnvidia-ml.so.1 for fog-agent tests: a 2-GPU host (two A100 PCIe 80GB at
 * 0000:17:00.0 and 0000:65:00.0, matching the server-2s-smt fixture).
 *
 * Only the entry points the agent calls exist (nvml-wrapper resolves symbols lazily).
 * Signatures and struct layouts follow NVIDIA's nvml.h (mirrored by nvml-wrapper-sys).
 *
 * Failure modes, read at init from $FOG_NVML_SIM or, when that is unset, from the file
 * `fog-nvml-sim.conf` next to this library (so parallel tests in one process can each load their
 * own copy with their own mode). Comma-separated:
 *   driver_not_loaded        init returns NVML_ERROR_DRIVER_NOT_LOADED
 *   gpu_lost=<index>         every query on that device returns NVML_ERROR_GPU_IS_LOST
 *   fail_query=<nvmlName>    that entry point returns NVML_ERROR_NOT_SUPPORTED on every device
 *   acct=<index>:<pid>:<start_us>:<time_ms>:<running>
 *                            a process accounting record on that device (start as Unix us;
 *                            time as NVML reports it: 0 while running)
 *   acct_off                 accounting mode starts disabled (nvmlDeviceSetAccountingMode
 *                            enables it)
 *   acct_locked              ... and enabling it fails with NVML_ERROR_NO_PERMISSION
 * The accounting records can also come from `fog-nvml-sim.acct` next to the library, re-read at
 * every nvmlDeviceGetAccountingPids (for records of a process a test starts later).
 *
 * Running compute processes: pid 4242 on GPU 1 (1 GiB), plus the process of every running
 * accounting record (512 MiB each). nvmlDeviceGetProcessUtilization gives one sample per
 * running process: SM 25% for pid 4242, 40% for the others.
 *
 * To add an entry point: write it with DEVICE_QUERY(...) first, then fill the outputs from
 * the `struct sim_gpu` table (add a field there if needed).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
};

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

/* nvmlProcessInfo_t (v2 layout, used by nvmlDeviceGetComputeRunningProcesses_v3). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

/* One simulated compute process on GPU 1; 0xFFFFFFFF = no MIG instance. */
static const nvmlProcessInfo_t GPU1_PROCESSES[] = {
    {4242, 1073741824ULL, 0xFFFFFFFFu, 0xFFFFFFFFu},
};

/* nvmlClockType_t */
enum { NVML_CLOCK_GRAPHICS = 0, NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2, NVML_CLOCK_VIDEO = 3 };

struct sim_gpu {
    const char *name, *uuid, *serial, *part_number, *bus_id;
    unsigned int domain, bus, device, pci_device_id, pci_subsystem_id;
    unsigned long long memory_total, memory_used;
    int cc_major, cc_minor;
    unsigned int pcie_gen_cur, pcie_gen_max, pcie_width_cur, pcie_width_max;
    unsigned int power_limit_mw, power_default_mw, power_enforced_mw, power_usage_mw;
    unsigned int max_clock[4], clock[4];
    int ecc_current, ecc_pending;
    unsigned int mig_current, mig_pending;
    unsigned int temperature_c, util_gpu, util_memory;
    unsigned long long throttle_reasons;
};

static const struct sim_gpu GPUS[] = {
    {"NVIDIA A100 80GB PCIe", "GPU-1f0e4a2b-8c3d-4e5f-9a6b-7c8d9e0f1a2b", "1324021000001",
     "900-21001-0020-100", "00000000:17:00.0", 0, 0x17, 0, 0x20b510de, 0x153310de,
     85899345920ULL, 1073741824ULL, 8, 0, 4, 4, 16, 16, 300000, 300000, 300000, 61000,
     {1410, 1410, 1512, 1275}, {210, 210, 1512, 795}, 1, 1, 0, 0, 34, 3, 1, 0x1ULL},
    {"NVIDIA A100 80GB PCIe", "GPU-3a4b5c6d-7e8f-4a0b-8c2d-3e4f5a6b7c8d", "1324021000002",
     "900-21001-0020-100", "00000000:65:00.0", 0, 0x65, 0, 0x20b510de, 0x153310de,
     85899345920ULL, 2147483648ULL, 8, 0, 3, 4, 8, 16, 250000, 300000, 250000, 72000,
     {1410, 1410, 1512, 1275}, {1410, 1410, 1512, 1275}, 1, 0, 1, 1, 51, 97, 40, 0x0ULL},
};
#define GPU_COUNT ((unsigned int)(sizeof GPUS / sizeof GPUS[0]))

/* nvmlAccountingStats_t */
typedef struct {
    unsigned int gpuUtilization, memoryUtilization;
    unsigned long long maxMemoryUsage, time, startTime;
    unsigned int isRunning;
    unsigned int reserved[5];
} nvmlAccountingStats_t;

struct sim_acct {
    unsigned int gpu, pid, running;
    unsigned long long start_us, time_ms;
};
#define MAX_ACCT 32

static struct {
    int initialized;
    int driver_not_loaded;
    int lost_index; /* -1: none */
    char fail_query[128];
    int acct_locked;
    unsigned int acct_enabled[2]; /* per device; GPU_COUNT is 2 */
    struct sim_acct acct[MAX_ACCT];
    unsigned int acct_count;
} sim = {0, 0, -1, "", 0, {1, 1}, {{0, 0, 0, 0, 0}}, 0};

/* nvmlDevice_t is an opaque pointer; ours points into GPUS. */
typedef const struct sim_gpu *nvmlDevice_t;

/* Reads the file `name` next to this library into buf; 0 when there is none. */
static int read_sim_file(const char *name, char *buf, size_t size) {
    Dl_info info;
    buf[0] = '\0';
    if (!dladdr((void *)read_sim_file, &info) || !info.dli_fname)
        return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s", info.dli_fname);
    char *slash = strrchr(path, '/');
    if (!slash)
        return 0;
    snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "%s", name);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return 1;
}

/* An `acct=` token into the accounting table. */
static void add_acct(const char *value) {
    if (sim.acct_count >= MAX_ACCT)
        return;
    struct sim_acct *a = &sim.acct[sim.acct_count];
    if (sscanf(value, "%u:%u:%llu:%llu:%u", &a->gpu, &a->pid, &a->start_us, &a->time_ms,
               &a->running) == 5)
        sim.acct_count++;
}

/* Accounting records can change while a test runs (a job's real pid is known only once it
 * started): when `fog-nvml-sim.acct` exists next to the library, its `acct=` tokens replace the
 * table at every accounting call. */
static void reload_acct(void) {
    char buf[4096];
    if (!read_sim_file("fog-nvml-sim.acct", buf, sizeof buf))
        return;
    sim.acct_count = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",\n \t", &save); tok;
         tok = strtok_r(NULL, ",\n \t", &save))
        if (strncmp(tok, "acct=", 5) == 0)
            add_acct(tok + 5);
}

static void load_config(void) {
    char buf[4096] = "";
    const char *env = getenv("FOG_NVML_SIM");
    if (env)
        snprintf(buf, sizeof buf, "%s", env);
    else
        read_sim_file("fog-nvml-sim.conf", buf, sizeof buf);
    sim.driver_not_loaded = 0;
    sim.lost_index = -1;
    sim.fail_query[0] = '\0';
    sim.acct_locked = 0;
    sim.acct_enabled[0] = sim.acct_enabled[1] = 1;
    sim.acct_count = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",\n \t", &save); tok;
         tok = strtok_r(NULL, ",\n \t", &save)) {
        if (strcmp(tok, "driver_not_loaded") == 0)
            sim.driver_not_loaded = 1;
        else if (strncmp(tok, "gpu_lost=", 9) == 0)
            sim.lost_index = atoi(tok + 9);
        else if (strncmp(tok, "fail_query=", 11) == 0)
            snprintf(sim.fail_query, sizeof sim.fail_query, "%s", tok + 11);
        else if (strcmp(tok, "acct_off") == 0)
            sim.acct_enabled[0] = sim.acct_enabled[1] = 0;
        else if (strcmp(tok, "acct_locked") == 0)
            sim.acct_locked = 1;
        else if (strncmp(tok, "acct=", 5) == 0)
            add_acct(tok + 5);
    }
}

/* Common checks of every device query: initialized, valid handle, lost GPU, forced failure. */
static nvmlReturn_t check_device(const char *fn, nvmlDevice_t dev, const void *out) {
    if (!sim.initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!dev || dev < GPUS || dev >= GPUS + GPU_COUNT || !out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (sim.lost_index == (int)(dev - GPUS))
        return NVML_ERROR_GPU_IS_LOST;
    if (strcmp(sim.fail_query, fn) == 0)
        return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}
#define DEVICE_QUERY(dev, out)                                        \
    do {                                                              \
        nvmlReturn_t check_ = check_device(__func__, (dev), (out));   \
        if (check_ != NVML_SUCCESS)                                   \
            return check_;                                            \
    } while (0)

static nvmlReturn_t copy_string(const char *value, char *out, unsigned int length) {
    if (strlen(value) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

/* ---- library ---- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    load_config();
    if (sim.driver_not_loaded)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    sim.initialized = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!sim.initialized)
        return NVML_ERROR_UNINITIALIZED;
    sim.initialized = 0;
    return NVML_SUCCESS;
}

/* ---- system ---- */

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!sim.initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (strcmp(sim.fail_query, __func__) == 0)
        return NVML_ERROR_NOT_SUPPORTED;
    return copy_string("550.54.15", version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    if (!sim.initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (strcmp(sim.fail_query, __func__) == 0)
        return NVML_ERROR_NOT_SUPPORTED;
    *version = 12040;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!sim.initialized)
        return NVML_ERROR_UNINITIALIZED;
    *count = GPU_COUNT;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!sim.initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (index >= GPU_COUNT || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &GPUS[index];
    return NVML_SUCCESS;
}

/* ---- device identity (inventory) ---- */

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length) {
    DEVICE_QUERY(dev, name);
    return copy_string(dev->name, name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int length) {
    DEVICE_QUERY(dev, uuid);
    return copy_string(dev->uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t dev, char *serial, unsigned int length) {
    DEVICE_QUERY(dev, serial);
    return copy_string(dev->serial, serial, length);
}

nvmlReturn_t nvmlDeviceGetBoardPartNumber(nvmlDevice_t dev, char *part, unsigned int length) {
    DEVICE_QUERY(dev, part);
    return copy_string(dev->part_number, part, length);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t dev, nvmlPciInfo_t *pci) {
    DEVICE_QUERY(dev, pci);
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.0", dev->domain,
             dev->bus, dev->device);
    snprintf(pci->busId, sizeof pci->busId, "%s", dev->bus_id);
    pci->domain = dev->domain;
    pci->bus = dev->bus;
    pci->device = dev->device;
    pci->pciDeviceId = dev->pci_device_id;
    pci->pciSubSystemId = dev->pci_subsystem_id;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *memory) {
    DEVICE_QUERY(dev, memory);
    if (memory->version != (unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->reserved = 512ULL << 20;
    memory->total = dev->memory_total;
    memory->used = dev->memory_used;
    memory->free = dev->memory_total - dev->memory_used - memory->reserved;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t dev, int *major, int *minor) {
    DEVICE_QUERY(dev, major);
    if (!minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    *major = dev->cc_major;
    *minor = dev->cc_minor;
    return NVML_SUCCESS;
}

#define UINT_QUERY(fn, field)                             \
    nvmlReturn_t fn(nvmlDevice_t dev, unsigned int *out) { \
        DEVICE_QUERY(dev, out);                           \
        *out = dev->field;                                \
        return NVML_SUCCESS;                              \
    }

UINT_QUERY(nvmlDeviceGetCurrPcieLinkGeneration, pcie_gen_cur)
UINT_QUERY(nvmlDeviceGetMaxPcieLinkGeneration, pcie_gen_max)
UINT_QUERY(nvmlDeviceGetCurrPcieLinkWidth, pcie_width_cur)
UINT_QUERY(nvmlDeviceGetMaxPcieLinkWidth, pcie_width_max)
UINT_QUERY(nvmlDeviceGetPowerManagementLimit, power_limit_mw)
UINT_QUERY(nvmlDeviceGetPowerManagementDefaultLimit, power_default_mw)
UINT_QUERY(nvmlDeviceGetEnforcedPowerLimit, power_enforced_mw)

nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t dev, int type, unsigned int *clock) {
    DEVICE_QUERY(dev, clock);
    if (type < 0 || type > NVML_CLOCK_VIDEO)
        return NVML_ERROR_INVALID_ARGUMENT;
    *clock = dev->max_clock[type];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t dev, int *current, int *pending) {
    DEVICE_QUERY(dev, current);
    if (!pending)
        return NVML_ERROR_INVALID_ARGUMENT;
    *current = dev->ecc_current;
    *pending = dev->ecc_pending;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t dev, unsigned int *current, unsigned int *pending) {
    DEVICE_QUERY(dev, current);
    if (!pending)
        return NVML_ERROR_INVALID_ARGUMENT;
    *current = dev->mig_current;
    *pending = dev->mig_pending;
    return NVML_SUCCESS;
}

/* ---- telemetry (for the metrics collector; values are fixed per GPU) ---- */

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t dev, nvmlUtilization_t *util) {
    DEVICE_QUERY(dev, util);
    util->gpu = dev->util_gpu;
    util->memory = dev->util_memory;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t dev, int sensor, unsigned int *temp) {
    DEVICE_QUERY(dev, temp);
    if (sensor != 0) /* NVML_TEMPERATURE_GPU */
        return NVML_ERROR_INVALID_ARGUMENT;
    *temp = dev->temperature_c;
    return NVML_SUCCESS;
}

UINT_QUERY(nvmlDeviceGetPowerUsage, power_usage_mw)

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t dev, int type, unsigned int *clock) {
    DEVICE_QUERY(dev, clock);
    if (type < 0 || type > NVML_CLOCK_VIDEO)
        return NVML_ERROR_INVALID_ARGUMENT;
    *clock = dev->clock[type];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t dev,
                                                       unsigned long long *reasons) {
    DEVICE_QUERY(dev, reasons);
    *reasons = dev->throttle_reasons;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t dev,
                                                    unsigned long long *reasons) {
    DEVICE_QUERY(dev, reasons);
    *reasons = dev->throttle_reasons;
    return NVML_SUCCESS;
}

/* ---- per-process accounting ---- */

nvmlReturn_t nvmlDeviceGetAccountingMode(nvmlDevice_t dev, unsigned int *mode) {
    DEVICE_QUERY(dev, mode);
    *mode = sim.acct_enabled[dev - GPUS];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceSetAccountingMode(nvmlDevice_t dev, unsigned int mode) {
    DEVICE_QUERY(dev, &mode);
    if (sim.acct_locked)
        return NVML_ERROR_NO_PERMISSION;
    sim.acct_enabled[dev - GPUS] = mode ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetAccountingPids(nvmlDevice_t dev, unsigned int *count,
                                         unsigned int *pids) {
    DEVICE_QUERY(dev, count);
    unsigned int index = (unsigned int)(dev - GPUS);
    if (!sim.acct_enabled[index])
        return NVML_ERROR_NOT_SUPPORTED;
    reload_acct();
    unsigned int have = 0;
    for (unsigned int i = 0; i < sim.acct_count; i++)
        have += sim.acct[i].gpu == index;
    if (*count < have || (have > 0 && !pids)) {
        *count = have;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int n = 0;
    for (unsigned int i = 0; i < sim.acct_count; i++)
        if (sim.acct[i].gpu == index)
            pids[n++] = sim.acct[i].pid;
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetAccountingStats(nvmlDevice_t dev, unsigned int pid,
                                          nvmlAccountingStats_t *stats) {
    DEVICE_QUERY(dev, stats);
    unsigned int index = (unsigned int)(dev - GPUS);
    if (!sim.acct_enabled[index])
        return NVML_ERROR_NOT_SUPPORTED;
    for (unsigned int i = 0; i < sim.acct_count; i++) {
        const struct sim_acct *a = &sim.acct[i];
        if (a->gpu == index && a->pid == pid) {
            memset(stats, 0, sizeof *stats);
            stats->gpuUtilization = 50;
            stats->memoryUtilization = 10;
            stats->maxMemoryUsage = 1073741824ULL;
            stats->time = a->time_ms;
            stats->startTime = a->start_us;
            stats->isRunning = a->running;
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* ---- running processes: GPU 1's static one, plus every running accounting record ---- */

/* GPU memory of a process that comes from an accounting record, and the SM utilization the
 * per-process samples give each running process. */
#define ACCT_PROCESS_MEMORY 536870912ULL
#define STATIC_PROCESS_SM 25u
#define ACCT_PROCESS_SM 40u

/* The running processes of a device into `out` (up to `cap`); their number. */
static unsigned int running_processes(const struct sim_gpu *dev, nvmlProcessInfo_t *out,
                                      unsigned int cap) {
    unsigned int index = (unsigned int)(dev - GPUS), n = 0;
    if (dev == &GPUS[1])
        for (unsigned int i = 0; i < sizeof GPU1_PROCESSES / sizeof GPU1_PROCESSES[0]; i++, n++)
            if (out && n < cap)
                out[n] = GPU1_PROCESSES[i];
    reload_acct();
    for (unsigned int i = 0; i < sim.acct_count; i++) {
        const struct sim_acct *a = &sim.acct[i];
        if (a->gpu != index || !a->running)
            continue;
        if (out && n < cap) {
            nvmlProcessInfo_t p = {a->pid, ACCT_PROCESS_MEMORY, 0xFFFFFFFFu, 0xFFFFFFFFu};
            out[n] = p;
        }
        n++;
    }
    return n;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    DEVICE_QUERY(dev, count);
    unsigned int have = running_processes(dev, NULL, 0);
    if (*count < have || (have > 0 && !infos)) {
        *count = have;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = running_processes(dev, infos, *count);
    return NVML_SUCCESS;
}

/* nvmlProcessUtilizationSample_t */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

/* One sample per running process, taken "now"; NVML_ERROR_NOT_FOUND when there is none, as
 * the driver answers when no process ran since `lastSeen`. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t dev,
                                             nvmlProcessUtilizationSample_t *samples,
                                             unsigned int *count,
                                             unsigned long long lastSeen) {
    DEVICE_QUERY(dev, count);
    (void)lastSeen;
    nvmlProcessInfo_t procs[MAX_ACCT + 4];
    unsigned int have = running_processes(dev, procs, MAX_ACCT + 4);
    if (have == 0)
        return NVML_ERROR_NOT_FOUND;
    if (!samples || *count < have) {
        *count = have;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long now_us = (unsigned long long)ts.tv_sec * 1000000ULL +
                                (unsigned long long)ts.tv_nsec / 1000ULL;
    unsigned int statics = dev == &GPUS[1] ? sizeof GPU1_PROCESSES / sizeof GPU1_PROCESSES[0] : 0;
    for (unsigned int i = 0; i < have; i++) {
        unsigned int sm = i < statics ? STATIC_PROCESS_SM : ACCT_PROCESS_SM;
        nvmlProcessUtilizationSample_t s = {procs[i].pid, now_us, sm, 5, 0, 0};
        samples[i] = s;
    }
    *count = have;
    return NVML_SUCCESS;
}
