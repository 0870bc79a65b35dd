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
 * Windows (no SIGTERM, fork or process groups to signal): CMD starts
 * suspended in a job object with kill-on-close (so it dies with the
 * launcher however the launcher ends) and in a console process group of its
 * own, then resumes; `llmlb stop` sets the lock's stop channel, which the
 * wait loop polls with llmlb_lock_wait_stop, and Ctrl-C sets the same flag:
 * CMD then gets CTRL_BREAK_EVENT and, 3 s later, its job is terminated. The
 * lock is not passed to CMD there. Build with mingw-w64:
 *   x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -pedantic -Iinclude \
 *      ffi/examples/launcher.c target/x86_64-pc-windows-gnu/release/libllmlb_lock.a \
 *      -lws2_32 -lntdll -luserenv -lbcrypt -o launcher.exe
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#endif

/* How long CMD's group has after SIGTERM (or a forwarded signal) before
 * SIGKILL, and how long after SIGKILL before we stop waiting. */
#define STOP_GRACE_MS 3000
#define KILL_WAIT_MS 5000
#define POLL_MS 20

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


/* Takes PORT's lock into *lock: 0, or the exit code after saying why not. */
static int take_lock(uint16_t port, LlmlbLock **lock) {
  LlmlbLockInfo holder;
  LlmlbStatus status;

  status = llmlb_lock_acquire(NULL, port, lock, &holder);
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
  return 0;
}

#ifndef _WIN32

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
 * KILL_WAIT_MS later: never an unbounded wait. Between checks it waits on
 * the lock's stop channel (llmlb_lock_wait_stop). Returns CMD's exit code. */
static int run_to_end(const LlmlbLock *lock, pid_t child) {
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
    {
      /* Where Windows' `llmlb stop` would arrive; here it is SIGTERM (the
       * handler above), and this is a sleep that a signal cuts short. */
      int requested = 0;
      llmlb_lock_wait_stop(lock, POLL_MS, &requested);
      if (requested && !g_stopping) {
        g_stopping = 1;
        kill(-child, SIGTERM);
      }
    }
  }
}

int main(int argc, char **argv) {
  LlmlbLock *lock = NULL;
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

  if ((code = take_lock(port, &lock)) != 0) return code;

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

  code = run_to_end(lock, child);
  status = llmlb_lock_release(lock);
  if (status != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: releasing the lock: %s\n", llmlb_last_error());
  return code;
}

#else /* _WIN32 */

/* Set by the console handler: Ctrl-C or Ctrl-Break reached the launcher. */
static volatile LONG g_interrupted = 0;

static BOOL WINAPI on_console_event(DWORD event) {
  if (event != CTRL_C_EVENT && event != CTRL_BREAK_EVENT) return FALSE;
  InterlockedExchange(&g_interrupted, 1);
  return TRUE;
}

/* Appends ARG to the command line CMD (capacity CAP, length *LEN) quoted as
 * CommandLineToArgvW splits it: 0 if it does not fit. */
static int append_arg(char *cmd, size_t cap, size_t *len, const char *arg) {
  size_t i, slashes;
  int quote = arg[0] == '\0' || strpbrk(arg, " \t\"") != NULL;
#define PUT(c)                       \
  do {                               \
    if (*len + 1 >= cap) return 0;   \
    cmd[(*len)++] = (c);             \
  } while (0)
  if (*len > 0) PUT(' ');
  if (quote) PUT('"');
  for (i = 0;; i++) {
    slashes = 0;
    while (arg[i] == '\\') {
      slashes++;
      i++;
    }
    if (arg[i] == '\0') {
      /* Backslashes before the closing quote are doubled. */
      for (; slashes > 0; slashes--) {
        PUT('\\');
        if (quote) PUT('\\');
      }
      break;
    }
    if (arg[i] == '"') {
      for (; slashes > 0; slashes--) {
        PUT('\\');
        PUT('\\');
      }
      PUT('\\');
    } else {
      for (; slashes > 0; slashes--) PUT('\\');
    }
    PUT(arg[i]);
  }
  if (quote) PUT('"');
#undef PUT
  cmd[*len] = '\0';
  return 1;
}

/* Waits for CMD; on a stop request (llmlb stop's channel, or Ctrl-C) sends
 * CTRL_BREAK_EVENT to CMD's console process group, terminates its job
 * STOP_GRACE_MS later, and gives up KILL_WAIT_MS after that. Whatever CMD
 * left in its job dies when the job's handle is closed. Returns CMD's exit
 * code. */
static int run_to_end(const LlmlbLock *lock, const PROCESS_INFORMATION *child, HANDLE job) {
  ULONGLONG deadline = 0;
  int stopping = 0, killed = 0;
  DWORD code = 1;
  for (;;) {
    int requested = 0;
    if (WaitForSingleObject(child->hProcess, 0) == WAIT_OBJECT_0) {
      if (!GetExitCodeProcess(child->hProcess, &code)) code = 1;
      return (int)code;
    }
    llmlb_lock_wait_stop(lock, POLL_MS, &requested);
    if ((requested || g_interrupted) && !stopping) {
      stopping = 1;
      /* Fails if CMD does not share our console: the deadline still ends it. */
      GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, child->dwProcessId);
      deadline = GetTickCount64() + STOP_GRACE_MS;
    }
    if (stopping && GetTickCount64() >= deadline) {
      if (killed) {
        fprintf(stderr, "launcher: the command's job still has processes after termination\n");
        return 1;
      }
      fprintf(stderr, "launcher: the command did not exit within %d s; terminating its job\n",
              STOP_GRACE_MS / 1000);
      TerminateJobObject(job, 1);
      killed = 1;
      deadline = GetTickCount64() + KILL_WAIT_MS;
    }
  }
}

int main(int argc, char **argv) {
  LlmlbLock *lock = NULL;
  uint16_t port = 0;
  char port_text[8];
  static char cmdline[32768];
  size_t len = 0;
  int i, code;
  HANDLE job;
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits;
  STARTUPINFOA startup;
  PROCESS_INFORMATION child;

  if (argc < 4 || strcmp(argv[2], "--") != 0) return usage(argv[0]);
  if (!parse_port(argv[1], &port)) {
    fprintf(stderr, "launcher: invalid port %s: ports are 1..=65535\n", argv[1]);
    return 2;
  }
  for (i = 3; i < argc; i++) {
    if (!append_arg(cmdline, sizeof cmdline, &len, argv[i])) {
      fprintf(stderr, "launcher: the command line is too long\n");
      return 2;
    }
  }
  /* Before the lock, so a Ctrl-C during start-up is not lost. */
  SetConsoleCtrlHandler(on_console_event, TRUE);
  if ((code = take_lock(port, &lock)) != 0) return code;

  /* Kill-on-close: the handle is not inheritable, so CMD dies with us. */
  memset(&limits, 0, sizeof limits);
  limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
  job = CreateJobObjectA(NULL, NULL);
  if (job == NULL ||
      !SetInformationJobObject(job, JobObjectExtendedLimitInformation, &limits, sizeof limits)) {
    fprintf(stderr, "launcher: cannot create a job object (error %lu)\n", GetLastError());
    llmlb_lock_release(lock);
    return 1;
  }
  snprintf(port_text, sizeof port_text, "%u", (unsigned)port);
  SetEnvironmentVariableA("LLMLB_PORT", port_text);
  memset(&startup, 0, sizeof startup);
  startup.cb = sizeof startup;
  /* Suspended until it is in the job, so nothing it starts escapes it. */
  if (!CreateProcessA(NULL, cmdline, NULL, NULL, TRUE, CREATE_NEW_PROCESS_GROUP | CREATE_SUSPENDED,
                      NULL, NULL, &startup, &child)) {
    DWORD err = GetLastError();
    fprintf(stderr, "launcher: cannot run %s (error %lu)\n", argv[3], err);
    llmlb_lock_release(lock);
    return err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND ? 127 : 126;
  }
  if (!AssignProcessToJobObject(job, child.hProcess)) {
    fprintf(stderr, "launcher: cannot put %s in a job object (error %lu)\n", argv[3],
            GetLastError());
    TerminateProcess(child.hProcess, 1);
    llmlb_lock_release(lock);
    return 126;
  }
  ResumeThread(child.hThread);
  CloseHandle(child.hThread);

  code = run_to_end(lock, &child, job);
  CloseHandle(job); /* kill-on-close: what CMD left behind ends here */
  CloseHandle(child.hProcess);
  if (llmlb_lock_release(lock) != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: releasing the lock: %s\n", llmlb_last_error());
  return code;
}

#endif /* _WIN32 */
