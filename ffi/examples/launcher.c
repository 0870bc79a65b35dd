/*
 * launcher PORT -- CMD [ARGS...]
 *
 * Runs CMD under the per-port lock `llmlb serve` takes, exactly as
 * `llmlb serve --port PORT -- CMD` does: takes the lock for PORT (lock dir
 * from LLMLB_LOCK_DIR, else the per-user default), runs CMD with
 * LLMLB_PORT=PORT in a process group of its own (recorded in the lock file,
 * so `llmlb stop --force` reaches all of it), forwards SIGTERM and SIGINT to
 * that group, and once CMD exits ends what is left of the group (SIGTERM,
 * then SIGKILL after 3 s; a forwarded signal starts the same clock), then
 * releases the lock and exits with CMD's code (128+signal if it was killed).
 *
 * CMD inherits the lock's descriptor (LLMLB_LOCK_FD names it): if the
 * launcher is killed, the port stays locked while any of CMD's tree lives.
 * If the port is held, prints the holder's PID and exits 1. Usage errors
 * exit 2.
 *
 * Build against the installed library (README "Install"):
 *   cc -o launcher ffi/examples/launcher.c $(pkg-config --cflags --libs llmlb_lock)
 * or from the repository (after `cargo build --release -p llmlb-lock-ffi`):
 *   cc -std=c11 -Wall -Wextra -pedantic -Iinclude ffi/examples/launcher.c \
 *      target/release/libllmlb_lock.a -lpthread -ldl -lm -o launcher
 */
#define _XOPEN_SOURCE 700

#include "llmlb_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* How long CMD's group has after SIGTERM (or a forwarded signal) before
 * SIGKILL, and how long after SIGKILL before we stop waiting. */
#define STOP_GRACE_MS 3000
#define KILL_WAIT_MS 5000
#define POLL_MS 20

/* The child's pid, which is also its process group id. */
static volatile sig_atomic_t g_child = 0;
/* Set by the handler: a stop was requested (the deadline clock starts). */
static volatile sig_atomic_t g_stopping = 0;

/* kill(2) is async-signal-safe. */
static void forward_signal(int sig) {
  pid_t child = (pid_t)g_child;
  g_stopping = 1;
  if (child > 0) kill(-child, sig);
}

static void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Whether no process of group `pgid` is left: reaps our exited children in
 * it first (orphans come to us as subreaper; zombies still count as
 * members). Only after the leader itself was reaped. */
static int group_gone(pid_t pgid) {
  int status;
  while (waitpid(-pgid, &status, WNOHANG) > 0) {
  }
  return kill(-pgid, 0) != 0 && errno == ESRCH;
}

/* Waits for the direct child and then for the rest of its group, sending
 * SIGTERM to the group once the child has exited (unless a forwarded
 * signal already started the clock), SIGKILL at the deadline, and giving up
 * KILL_WAIT_MS later: never an unbounded wait. Returns CMD's exit code. */
static int run_to_end(pid_t child) {
  long deadline = -1;
  int killed = 0, code = -1, status = 0;
  for (;;) {
    if (code < 0) {
      pid_t got = waitpid(child, &status, WNOHANG);
      if (got == child) {
        if (WIFEXITED(status)) code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status)) code = 128 + WTERMSIG(status);
        else code = 1;
      } else if (got < 0 && errno != EINTR) {
        perror("launcher: waitpid");
        code = 1;
      }
    }
    if (code >= 0) {
      if (group_gone(child)) return code;
      if (deadline < 0) kill(-child, SIGTERM); /* CMD left processes behind */
    }
    if (deadline < 0 && (g_stopping || code >= 0)) deadline = now_ms() + STOP_GRACE_MS;
    if (deadline >= 0 && now_ms() >= deadline) {
      if (killed) {
        fprintf(stderr, "launcher: process group %ld still has processes after SIGKILL\n",
                (long)child);
        return code >= 0 ? code : 1;
      }
      fprintf(stderr, "launcher: the command did not exit within %d s; sending SIGKILL to its group\n",
              STOP_GRACE_MS / 1000);
      kill(-child, SIGKILL);
      killed = 1;
      deadline = now_ms() + KILL_WAIT_MS;
    }
    sleep_ms(POLL_MS);
  }
}

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s PORT -- CMD [ARGS...]\n", argv0);
  return 2;
}

static int parse_port(const char *text, uint16_t *port) {
  char *end = NULL;
  unsigned long value;
  if (text[0] < '0' || text[0] > '9') return 0;
  errno = 0;
  value = strtoul(text, &end, 10);
  if (errno != 0 || *end != '\0' || value == 0 || value > 65535) return 0;
  *port = (uint16_t)value;
  return 1;
}

int main(int argc, char **argv) {
  LlmlbLock *lock = NULL;
  LlmlbLockInfo holder;
  LlmlbStatus status;
  uint16_t port = 0;
  sigset_t forwarded, old_mask;
  struct sigaction action;
  char port_text[8], fd_text[16];
  pid_t child, parent = getpid();
  int code, lock_fd = -1;

  if (argc < 4 || strcmp(argv[2], "--") != 0) return usage(argv[0]);
  if (!parse_port(argv[1], &port)) {
    fprintf(stderr, "launcher: invalid port %s: ports are 1..=65535\n", argv[1]);
    return 2;
  }

  status = llmlb_lock_acquire(NULL, port, &lock, &holder);
  if (status == LLMLB_STATUS_ALREADY_RUNNING) {
    if (holder.pid != 0)
      fprintf(stderr,
              "launcher: server already running on port %u (PID: %lu); to stop it: llmlb stop "
              "--port %u\n",
              (unsigned)port, (unsigned long)holder.pid, (unsigned)port);
    else
      fprintf(stderr,
              "launcher: server already running on port %u (holder details unreadable); to stop "
              "it: llmlb stop --port %u\n",
              (unsigned)port, (unsigned)port);
    return 1;
  }
  if (status != LLMLB_STATUS_OK) {
    fprintf(stderr, "launcher: %s\n", llmlb_last_error());
    return 1;
  }
  if (holder.pid != 0)
    fprintf(stderr, "launcher: reclaimed the stale lock of PID %lu on port %u\n",
            (unsigned long)holder.pid, (unsigned)port);

  /* CMD's tree inherits the lock (see the header comment). */
  status = llmlb_lock_fd(lock, &lock_fd);
  if (status != LLMLB_STATUS_OK) {
    fprintf(stderr, "launcher: %s\n", llmlb_last_error());
    llmlb_lock_release(lock);
    return 1;
  }
#ifdef __linux__
  /* Orphaned grandchildren come to us, so group_gone sees them die even
   * where init does not reap. */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
#endif

  /* Block the forwarded signals until the child's pid is recorded, so none
   * is lost between fork and the handler's installation. */
  sigemptyset(&forwarded);
  sigaddset(&forwarded, SIGTERM);
  sigaddset(&forwarded, SIGINT);
  sigprocmask(SIG_BLOCK, &forwarded, &old_mask);

  child = fork();
  if (child < 0) {
    perror("launcher: fork");
    llmlb_lock_release(lock);
    return 1;
  }
  if (child == 0) {
    /* Keep the lock descriptor across exec (it is close-on-exec), so CMD
     * and its descendants hold the lock. We do not release the inherited
     * handle here: exec keeps the descriptor, _exit closes it. */
    if (fcntl(lock_fd, F_SETFD, 0) != 0) _exit(126);
    setpgid(0, 0);
#ifdef __linux__
    /* If the launcher is killed, CMD dies with it (its grandchildren keep
     * the port locked until they exit). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
#endif
    snprintf(port_text, sizeof port_text, "%u", (unsigned)port);
    setenv("LLMLB_PORT", port_text, 1);
    snprintf(fd_text, sizeof fd_text, "%d", lock_fd);
    setenv("LLMLB_LOCK_FD", fd_text, 1);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    execvp(argv[3], argv + 3);
    fprintf(stderr, "launcher: cannot run %s: %s\n", argv[3], strerror(errno));
    _exit(127);
  }
  (void)parent;

  setpgid(child, child); /* also in the parent: whichever runs first wins */
  g_child = (sig_atomic_t)child;
  /* The exec child's group, so `llmlb stop --force` kills all of it. */
  status = llmlb_lock_set_child_pgid(lock, (uint32_t)child);
  if (status != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: cannot record the command's process group: %s\n",
            llmlb_last_error());
  memset(&action, 0, sizeof action);
  action.sa_handler = forward_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, NULL);
  sigaction(SIGINT, &action, NULL);
  sigprocmask(SIG_SETMASK, &old_mask, NULL);

  code = run_to_end(child);
  status = llmlb_lock_release(lock);
  if (status != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: releasing the lock: %s\n", llmlb_last_error());
  return code;
}
