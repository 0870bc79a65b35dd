/*
 * launcher PORT -- CMD [ARGS...]
 *
 * Runs CMD under the per-port lock `llmlb serve` takes: takes the lock for
 * PORT (lock dir from LLMLB_LOCK_DIR, else the per-user default), runs CMD
 * with LLMLB_PORT=PORT in a process group of its own, forwards SIGTERM and
 * SIGINT to that group, waits, releases the lock and exits with CMD's code
 * (128+signal if it was killed). If the port is held, prints the holder's PID
 * and exits 1. Usage errors exit 2.
 *
 * Build (after `cargo build --release -p llmlb-lock-ffi`):
 *   cc -std=c11 -Wall -Wextra -pedantic -Iinclude ffi/examples/launcher.c \
 *      target/release/libllmlb_lock.a -lpthread -ldl -lm -o launcher
 */
#define _XOPEN_SOURCE 700

#include "llmlb_lock.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* The child's pid, which is also its process group id. */
static volatile sig_atomic_t g_child = 0;

/* kill(2) is async-signal-safe. */
static void forward_signal(int sig) {
  pid_t child = (pid_t)g_child;
  if (child > 0) kill(-child, sig);
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

static int wait_for(pid_t child) {
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) {
      perror("launcher: waitpid");
      return 1;
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

int main(int argc, char **argv) {
  LlmlbLock *lock = NULL;
  LlmlbLockInfo holder;
  LlmlbStatus status;
  uint16_t port = 0;
  sigset_t forwarded, old_mask;
  struct sigaction action;
  char port_text[8];
  pid_t child, parent = getpid();
  int code;

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
    /* The lock descriptor is close-on-exec: CMD never holds the lock, so it
     * cannot keep the port "running" after the launcher is gone. We do not
     * release the inherited handle here: exec (or _exit) just drops it. */
    setpgid(0, 0);
#ifdef __linux__
    /* If the launcher is killed, CMD must not outlive it holding the port. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
#endif
    snprintf(port_text, sizeof port_text, "%u", (unsigned)port);
    setenv("LLMLB_PORT", port_text, 1);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    execvp(argv[3], argv + 3);
    fprintf(stderr, "launcher: cannot run %s: %s\n", argv[3], strerror(errno));
    _exit(127);
  }
  (void)parent;

  setpgid(child, child); /* also in the parent: whichever runs first wins */
  g_child = (sig_atomic_t)child;
  memset(&action, 0, sizeof action);
  action.sa_handler = forward_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, NULL);
  sigaction(SIGINT, &action, NULL);
  sigprocmask(SIG_SETMASK, &old_mask, NULL);

  code = wait_for(child);
  status = llmlb_lock_release(lock);
  if (status != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: releasing the lock: %s\n", llmlb_last_error());
  return code;
}
