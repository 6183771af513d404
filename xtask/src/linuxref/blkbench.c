/* blkbench DEV SIZE: what Lull's `blk bench -w DEV` measures, on Linux, with O_DIRECT and Linux
 * AIO (raw syscalls, no libaio): sequential write then read of SIZE bytes in 64 KiB requests with
 * 32 in flight; 4 KiB random reads at queue depth 1 (IOPS, p50/p99) and 32 (IOPS). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}
static uint64_t state = 0x2545f4914f6cdd1dull;
static uint64_t next_random(void) {
    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
    return state;
}
static aio_context_t ctx;
static int fd;
static char *buffers;

/* Runs `count` requests of `bytes` (opcode IOCB_CMD_PREAD/PWRITE), `depth` in flight; offsets
 * sequential from 0 or random 4 KiB-aligned within `size`. */
static int run(int opcode, uint64_t count, uint64_t bytes, int depth, int random, uint64_t size) {
    struct iocb cbs[32];
    struct iocb *list[1];
    struct io_event events[32];
    uint64_t issued = 0, done = 0;
    int free_slots[32], nfree = depth;
    for (int i = 0; i < depth; i++) free_slots[i] = i;
    while (done < count) {
        while (issued < count && nfree > 0) {
            int slot = free_slots[--nfree];
            struct iocb *cb = &cbs[slot];
            memset(cb, 0, sizeof *cb);
            cb->aio_fildes = fd;
            cb->aio_lio_opcode = opcode;
            cb->aio_buf = (uint64_t)(uintptr_t)(buffers + (uint64_t)slot * 65536);
            cb->aio_nbytes = bytes;
            cb->aio_offset = random ? (int64_t)(next_random() % (size / 4096) * 4096) : (int64_t)(issued * bytes);
            cb->aio_data = slot;
            list[0] = cb;
            if (syscall(SYS_io_submit, ctx, 1, list) != 1) { perror("io_submit"); return -1; }
            issued++;
        }
        long n = syscall(SYS_io_getevents, ctx, 1, depth, events, NULL);
        if (n < 0) { perror("io_getevents"); return -1; }
        for (long i = 0; i < n; i++) {
            if ((int64_t)events[i].res != (int64_t)bytes) { fprintf(stderr, "short I/O %lld\n", (long long)events[i].res); return -1; }
            free_slots[nfree++] = (int)events[i].data;
            done++;
        }
    }
    return 0;
}
static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}
static void rate(char *out, uint64_t bytes, uint64_t ns) {
    uint64_t kib_s = bytes * 1000000000ull / (ns ? ns : 1) / 1024;
    sprintf(out, "%llu.%02llu MiB/s", (unsigned long long)(kib_s / 1024), (unsigned long long)((kib_s % 1024) * 100 / 1024));
}
int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: blkbench DEV SIZE\n"); return 2; }
    uint64_t size = strtoull(argv[2], NULL, 0);
    fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0) { perror(argv[1]); return 1; }
    if (posix_memalign((void **)&buffers, 4096, 32 * 65536)) return 1;
    memset(buffers, 0x5a, 32 * 65536);
    if (syscall(SYS_io_setup, 32, &ctx)) { perror("io_setup"); return 1; }
    char w[64], r[64];
    uint64_t t = now_ns();
    if (run(IOCB_CMD_PWRITE, size / 65536, 65536, 32, 0, size) || fdatasync(fd)) return 1;
    rate(w, size, now_ns() - t);
    t = now_ns();
    if (run(IOCB_CMD_PREAD, size / 65536, 65536, 32, 0, size)) return 1;
    rate(r, size, now_ns() - t);
    enum { QD1 = 1000, QD32 = 4000 };
    static uint64_t lat[QD1];
    t = now_ns();
    for (int i = 0; i < QD1; i++) {
        uint64_t offset = next_random() % (size / 4096) * 4096, b = now_ns();
        if (pread(fd, buffers, 4096, (off_t)offset) != 4096) { perror("pread"); return 1; }
        lat[i] = now_ns() - b;
    }
    uint64_t qd1 = now_ns() - t;
    qsort(lat, QD1, sizeof lat[0], cmp);
    t = now_ns();
    if (run(IOCB_CMD_PREAD, QD32, 4096, 32, 1, size)) return 1;
    uint64_t qd32 = now_ns() - t;
    printf("blk bench %s %llu bytes: seqwrite %s seqread %s randread4k qd1 %llu IOPS (p50 %llu us, p99 %llu us) qd32 %llu IOPS\n",
           argv[1] + 5, (unsigned long long)size, w, r,
           (unsigned long long)(QD1 * 1000000000ull / qd1), (unsigned long long)(lat[QD1 / 2] / 1000),
           (unsigned long long)(lat[QD1 * 99 / 100] / 1000), (unsigned long long)(QD32 * 1000000000ull / qd32));
    return 0;
}
