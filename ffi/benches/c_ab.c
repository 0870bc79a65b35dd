/*
 * Two (or more) builds of the library, timed against each other in one
 * process: what a change to the C-ABI cycle gained, without the minutes
 * between two runs (in which a shared machine's speed moves by more than
 * the change).
 *
 *   c_ab BASE_DIR LIB.so [LIB.so ...]
 *
 * Each LIB is dlopen'ed privately (RTLD_LOCAL, so each keeps its own
 * symbols) and gets a lock dir under BASE_DIR (which must exist, mode
 * 0700). Every round times 1000 cycles of llmlb_lock_dir_acquire + release
 * through each library and of floor_unlink (open O_CREAT + flock + unlink +
 * close), in an order rotated from round to round (31 rounds; C_AB_ROUNDS
 * and C_AB_CYCLES change both counts, for a quick check). Per library it
 * prints the median CPU time per cycle and the median of the rounds' own
 * ratios to floor_unlink, with the middle half in brackets.
 *
 * Build the base with `git worktree add ../base <commit>` and
 * `CARGO_TARGET_DIR=../base-target cargo build --release -p llmlb-lock-ffi`
 * there, copy each .so to its own name, then:
 *   cc -O2 -o c_ab ffi/benches/c_ab.c -ldl && ./c_ab /dev/shm/DIR base.so new.so
 */
#define _GNU_SOURCE /* flock(2) */

#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROUNDS 101
#define MAX_LIBS 8
#define PORT 8000

typedef int (*dir_open_fn)(const char *, void **);
typedef int (*dir_acquire_fn)(const void *, uint16_t, void **, void *);
typedef int (*release_fn)(void *);

struct lib {
  const char *name;
  dir_acquire_fn acquire;
  release_fn release;
  void *dir;
};

static char g_floor_file[600];
static int g_rounds = 31;
static int g_cycles = 1000;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "c_ab: %s: %s\n", what, detail);
  exit(1);
}

static double cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) die("clock_gettime", "failed");
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void load(struct lib *l, const char *so, const char *dir) {
  void *handle = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  dir_open_fn dir_open;
  if (handle == NULL) die("dlopen", dlerror());
  /* Object pointers to function pointers: what dlsym's callers do. */
  dir_open = (dir_open_fn)(uintptr_t)dlsym(handle, "llmlb_lock_dir_open");
  l->acquire = (dir_acquire_fn)(uintptr_t)dlsym(handle, "llmlb_lock_dir_acquire");
  l->release = (release_fn)(uintptr_t)dlsym(handle, "llmlb_lock_release");
  if (dir_open == NULL || l->acquire == NULL || l->release == NULL)
    die(so, "not an llmlb lock library");
  if (mkdir(dir, 0700) != 0) die("mkdir (must not exist yet)", dir);
  if (dir_open(dir, &l->dir) != 0) die("llmlb_lock_dir_open", dir);
  l->name = so;
}

/* One round's cycles of contender `i` (`n` is floor_unlink). */
static double time_round(const struct lib *libs, int i, int n) {
  double start = cpu_ns();
  int k;
  for (k = 0; k < g_cycles; k++) {
    if (i == n) {
      int fd = open(g_floor_file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) die("floor", "open/flock failed");
      if (unlink(g_floor_file) != 0) die("floor", "unlink failed");
      close(fd);
    } else {
      void *lock;
      if (libs[i].acquire(libs[i].dir, PORT, &lock, NULL) != 0) die(libs[i].name, "acquire");
      if (libs[i].release(lock) != 0) die(libs[i].name, "release");
    }
  }
  return (cpu_ns() - start) / g_cycles;
}

/* The positive int in environment variable `name` (at most `max`), else
 * `fallback`. */
static int env_count(const char *name, int fallback, int max) {
  const char *text = getenv(name);
  char *end;
  long v;
  if (text == NULL) return fallback;
  v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < 1 || v > max) die(name, "not a count in range");
  return (int)v;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  struct lib libs[MAX_LIBS];
  static double ns[MAX_LIBS + 1][MAX_ROUNDS];
  char dir[600];
  int n = argc - 2, i, r;
  if (n < 1 || n > MAX_LIBS) {
    fprintf(stderr, "usage: %s BASE_DIR LIB.so [LIB.so ...] (at most %d)\n", argv[0], MAX_LIBS);
    return 2;
  }
  g_rounds = env_count("C_AB_ROUNDS", g_rounds, MAX_ROUNDS);
  g_cycles = env_count("C_AB_CYCLES", g_cycles, 1000000);
  for (i = 0; i < n; i++) {
    snprintf(dir, sizeof dir, "%s/lib%d", argv[1], i);
    load(&libs[i], argv[i + 2], dir);
  }
  snprintf(g_floor_file, sizeof g_floor_file, "%s/floor.lock", argv[1]);
  for (r = 0; r < g_rounds; r++)
    for (i = 0; i <= n; i++) {
      int who = (i + r) % (n + 1);
      ns[who][r] = time_round(libs, who, n);
    }
  for (i = 0; i <= n; i++) {
    double ratio[MAX_ROUNDS];
    for (r = 0; r < g_rounds; r++) ratio[r] = ns[i][r] / ns[n][r];
    qsort(ns[i], g_rounds, sizeof(double), by_value);
    qsort(ratio, g_rounds, sizeof(double), by_value);
    printf("%-40s %7.0f ns CPU  / floor_unlink %.2fx [%.2f-%.2f]\n",
           i == n ? "floor_unlink" : libs[i].name, ns[i][g_rounds / 2], ratio[g_rounds / 2],
           ratio[g_rounds / 4], ratio[3 * g_rounds / 4]);
  }
  return 0;
}
