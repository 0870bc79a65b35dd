/*
 * The C-ABI acquire + release cycle beside its floor, timed from C itself
 * (no Rust harness in between): what ffi/python/bench.py compares the Python
 * wrapper and filelock with, in the same run and on the same file system.
 *
 *   c_cycle LOCK_BASE_DIR ITERATIONS ROUNDS
 *
 * LOCK_BASE_DIR must exist (mode 0700); each contender gets its own sub-dir.
 * Rounds interleave the contenders, so a burst of load on a shared machine
 * hits all of them alike. Per contender it prints one line:
 *
 *   NAME WALL_NS CPU_NS
 *
 * the median over rounds of the time per cycle: wall clock, and this
 * process's CPU time (user + system, which waiting for a busy CPU does not
 * inflate).
 *
 * Built with -DC_CYCLE_NO_MAIN -shared -fPIC it is a library instead:
 * bench.py loads it into the Python process and times C and Python rounds
 * alternately in that one process (c_cycle_setup, c_cycle_time,
 * c_cycle_teardown below), so both meet the same CPU, caches and load.
 *
 * - floor_unlink: open(O_CREAT) + flock + unlink + close (our release
 *   removes the file, so each cycle creates an inode);
 * - c_abi: llmlb_lock_acquire(path) + llmlb_lock_release;
 * - c_abi_dir: llmlb_lock_dir_acquire(handle) + llmlb_lock_release.
 */
#define _XOPEN_SOURCE 700
#define _DEFAULT_SOURCE /* flock(2) */

#include "llmlb_lock.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PORT 8000
#define MAX_ROUNDS 101

enum { FLOOR_UNLINK, C_ABI, C_ABI_DIR, CONTENDERS };
static const char *const NAMES[CONTENDERS] = {"floor_unlink", "c_abi", "c_abi_dir"};

static char g_dirs[CONTENDERS][512];
static char g_floor_file[600];
static LlmlbLockDir *g_handle;

static void die(const char *what) {
  fprintf(stderr, "c_cycle: %s (last error: %s)\n", what, llmlb_last_error());
  exit(1);
}

static double now_ns(clockid_t clock) {
  struct timespec ts;
  if (clock_gettime(clock, &ts) != 0) die("clock_gettime failed");
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void floor_unlink(void) {
  int fd = open(g_floor_file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) die("floor: open/flock failed");
  if (unlink(g_floor_file) != 0) die("floor: unlink failed");
  close(fd);
}

static void c_abi(void) {
  LlmlbLock *lock;
  if (llmlb_lock_acquire(g_dirs[C_ABI], PORT, &lock, NULL) != LLMLB_STATUS_OK) die("acquire");
  if (llmlb_lock_release(lock) != LLMLB_STATUS_OK) die("release");
}

static void c_abi_dir(void) {
  LlmlbLock *lock;
  if (llmlb_lock_dir_acquire(g_handle, PORT, &lock, NULL) != LLMLB_STATUS_OK) die("dir acquire");
  if (llmlb_lock_release(lock) != LLMLB_STATUS_OK) die("release");
}

static void (*const RUN[CONTENDERS])(void) = {floor_unlink, c_abi, c_abi_dir};

/* Creates each contender's dir under base (which must exist) and opens the
 * dir handle. 0 on success; -1 with a message on stderr. */
int c_cycle_setup(const char *base) {
  int c;
  for (c = 0; c < CONTENDERS; c++) {
    int n = snprintf(g_dirs[c], sizeof g_dirs[c], "%s/%s", base, NAMES[c]);
    if (n < 0 || (size_t)n >= sizeof g_dirs[c]) {
      fprintf(stderr, "c_cycle: base dir path too long\n");
      return -1;
    }
    if (mkdir(g_dirs[c], 0700) != 0) {
      fprintf(stderr, "c_cycle: cannot create %s\n", g_dirs[c]);
      return -1;
    }
  }
  snprintf(g_floor_file, sizeof g_floor_file, "%s/serve_%d.lock", g_dirs[FLOOR_UNLINK], PORT);
  if (llmlb_lock_dir_open(g_dirs[C_ABI_DIR], &g_handle) != LLMLB_STATUS_OK) {
    fprintf(stderr, "c_cycle: dir open: %s\n", llmlb_last_error());
    return -1;
  }
  return 0;
}

/* Runs `iterations` cycles of contender `c` (0 floor_unlink, 1 c_abi,
 * 2 c_abi_dir); writes the time per cycle (wall, and this process's CPU).
 * Exits the process if a cycle fails: a benchmark of a failing cycle would
 * be a lie. */
void c_cycle_time(int c, long iterations, double *wall_ns, double *cpu_ns) {
  double w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
  long i;
  if (c < 0 || c >= CONTENDERS || iterations < 1) die("c_cycle_time: bad arguments");
  for (i = 0; i < iterations; i++) RUN[c]();
  *cpu_ns = (now_ns(CLOCK_PROCESS_CPUTIME_ID) - c0) / (double)iterations;
  *wall_ns = (now_ns(CLOCK_MONOTONIC) - w0) / (double)iterations;
}

void c_cycle_teardown(void) {
  llmlb_lock_dir_close(g_handle);
  g_handle = NULL;
}

#ifndef C_CYCLE_NO_MAIN
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
  static double wall[CONTENDERS][MAX_ROUNDS], cpu[CONTENDERS][MAX_ROUNDS];
  double w, u;
  long iterations;
  int rounds, c, r;
  if (argc != 4) {
    fprintf(stderr, "usage: %s LOCK_BASE_DIR ITERATIONS ROUNDS\n", argv[0]);
    return 2;
  }
  iterations = atol(argv[2]);
  rounds = atoi(argv[3]);
  if (iterations < 1 || rounds < 1 || rounds > MAX_ROUNDS) {
    fprintf(stderr, "c_cycle: ITERATIONS >= 1, ROUNDS in 1..=%d\n", MAX_ROUNDS);
    return 2;
  }
  if (c_cycle_setup(argv[1]) != 0) return 1;
  for (c = 0; c < CONTENDERS; c++) /* warm-up: page cache, dentries, PID cache */
    c_cycle_time(c, iterations / 10 + 1, &w, &u);
  for (r = 0; r < rounds; r++)
    for (c = 0; c < CONTENDERS; c++) c_cycle_time(c, iterations, &wall[c][r], &cpu[c][r]);
  for (c = 0; c < CONTENDERS; c++)
    printf("%s %.0f %.0f\n", NAMES[c], median(wall[c], rounds), median(cpu[c], rounds));
  c_cycle_teardown();
  return 0;
}
#endif
