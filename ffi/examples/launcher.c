/*
 * launcher [--ready listen|notify|immediate|http[:PATH]] PORT -- CMD [ARGS...]
 *
 * Runs CMD under the per-port lock `llmlb serve` takes, exactly as
 * `llmlb serve --port PORT -- CMD` does: takes the lock for PORT (lock dir
 * from LLMLB_LOCK_DIR, else the per-user default), runs CMD with
 * LLMLB_PORT=PORT in a process group of its own (recorded in the lock file,
 * so `llmlb stop --force` reaches all of it), forwards SIGTERM and SIGINT to
 * that group, and once CMD exits ends what is left of the group (SIGTERM,
 * then SIGKILL after 3 s; a forwarded signal starts the same clock), then
 * releases the lock and exits with CMD's code (128+signal if it was killed).
 * If CMD died of the SIGTERM or SIGINT the launcher forwarded, the launcher
 * then dies of that signal too (a clean stop for systemd; 128+N in a shell).
 * SIGHUP, SIGUSR1, SIGQUIT and SIGWINCH are forwarded to the group without
 * stopping anything (CMD decides what reload or log reopening means);
 * SIGUSR2 is reserved for a future reload: logged and ignored.
 *
 * CMD inherits the lock's descriptor (LLMLB_LOCK_FD names it): if the
 * launcher is killed, the port stays locked while any of CMD's tree lives.
 * If the port is held, prints the holder's PID and exits 1. Usage errors
 * exit 2.
 *
 * Readiness, as `llmlb serve --ready`: the lock record says `starting` from
 * the acquire's first write, `ready` once CMD is ready, `stopping` once
 * stopping begins (a signal, a stop request, or CMD's exit). --ready picks
 * when CMD is ready:
 *   listen (the default)  something listens on PORT (llmlb_port_listener,
 *                         checked 1 ms, 2 ms, ... up to every 50 ms). On
 *                         Linux the listener must be CMD or a descendant
 *                         (its /proc ppid chain reaches the launcher);
 *                         elsewhere any listener counts (the C ABI has no
 *                         tree-aware lookup), so a squatter could pass.
 *   notify                CMD's tree sends READY=1 to the NOTIFY_SOCKET the
 *                         launcher sets for it (sd_notify): a socket file,
 *                         mode 0600, in the 0700 lock dir, so only our own
 *                         user can send. Linux adds SO_PASSCRED: a datagram
 *                         counts only from our uid and a pid of CMD's tree.
 *                         Passed descriptors are closed on a detached
 *                         thread, so no sender can stall the launcher.
 *   immediate             CMD has been started.
 *   http[:PATH]           GET PATH (default /health) on 127.0.0.1:PORT
 *                         answers 2xx or 3xx within 1 s, probed by the
 *                         library (llmlb_ready_http_probe) with the listen
 *                         backoff; what each probe got is printed when it
 *                         changes ("not ready yet: GET /health: 503"). A
 *                         probe blocks the loop for up to 1 s, so a signal
 *                         may wait that long to be acted on.
 * Under a service manager (NOTIFY_SOCKET set for the launcher) the launcher
 * reports to it, as `llmlb serve` does: MAINPID and READY=1 when CMD is
 * ready, STOPPING=1 when stopping begins; CMD never gets the manager's
 * NOTIFY_SOCKET (nor WATCHDOG_*). Socket activation: when LISTEN_PID names
 * the launcher, the LISTEN_FDS descriptors from 3 on stay open for CMD, with
 * LISTEN_FDS (and LISTEN_FDNAMES) unchanged and LISTEN_PID set to CMD's PID
 * in the child between fork and exec; otherwise CMD gets no LISTEN_*.
 *
 * Windows (no SIGTERM, fork or process groups to signal): CMD starts
 * suspended in a job object with kill-on-close (so it dies with the
 * launcher however the launcher ends) and in a console process group of its
 * own, then resumes; `llmlb stop` sets the lock's stop channel, which the
 * wait loop polls with llmlb_lock_wait_stop, and Ctrl-C sets the same flag:
 * CMD then gets CTRL_BREAK_EVENT and, 3 s later, its job is terminated. The
 * lock is not passed to CMD there, and --ready notify is refused (no
 * sd_notify on Windows). Build with mingw-w64:
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
#ifdef __linux__
/* SO_PASSCRED, SCM_CREDENTIALS and struct ucred (--ready notify). */
#define _GNU_SOURCE
#endif
#ifdef __APPLE__
/* CMSG_SPACE and CMSG_LEN, which strict POSIX hides there. */
#define _DARWIN_C_SOURCE
#endif

#include "llmlb_lock.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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

/* The first and the longest pause between two --ready listen checks. */
#define LISTEN_FIRST_MS 1
#define LISTEN_MAX_MS 50

enum ready_policy { READY_LISTEN, READY_NOTIFY, READY_IMMEDIATE, READY_HTTP };

/* --ready http[:PATH]: the path probed. */
static const char *g_http_path = "/health";

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s [--ready listen|notify|immediate|http[:PATH]] PORT -- CMD [ARGS...]\n",
          argv0);
  return 2;
}

/* Parses the optional `--ready WHEN` at argv[1]: the index of PORT, or 0
 * after a usage message. */
static int parse_ready(int argc, char **argv, enum ready_policy *policy) {
  *policy = READY_LISTEN;
  if (argc < 2 || strcmp(argv[1], "--ready") != 0) return 1;
  if (argc < 3) return usage(argv[0]), 0;
  if (strcmp(argv[2], "listen") == 0) *policy = READY_LISTEN;
  else if (strcmp(argv[2], "notify") == 0) *policy = READY_NOTIFY;
  else if (strcmp(argv[2], "immediate") == 0) *policy = READY_IMMEDIATE;
  else if (strcmp(argv[2], "http") == 0) *policy = READY_HTTP;
  else if (strncmp(argv[2], "http:", 5) == 0) {
    /* The library's rule, so the CLI, C and Python accept the same paths. */
    if (llmlb_ready_http_path_check(argv[2] + 5) != LLMLB_STATUS_OK) {
      fprintf(stderr, "launcher: invalid --ready %s: %s\n", argv[2], llmlb_last_error());
      return 0;
    }
    *policy = READY_HTTP;
    g_http_path = argv[2] + 5;
  } else {
    fprintf(stderr, "launcher: invalid --ready %s: use listen, notify, immediate, http or http:/PATH\n",
            argv[2]);
    return 0;
  }
  return 3;
}

/* Records the serving state; a failure is only a warning (the server runs
 * on, `llmlb status` shows the previous state). */
static void set_state(LlmlbLock *lock, int state, const char *name) {
  if (llmlb_lock_set_state(lock, state) != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: cannot record the state %s: %s\n", name,
            llmlb_last_error());
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


/* Takes PORT's lock into *lock: 0, or the exit code after saying why not.
 * The record says `starting` from its first write: an acquire followed by
 * llmlb_lock_set_state would leave a moment without a state, which
 * `llmlb wait --for ready` reads as ready. */
static int take_lock(uint16_t port, LlmlbLock **lock) {
  LlmlbLockInfo holder;
  LlmlbStatus status;

  status =
      llmlb_lock_acquire_with_state(NULL, port, 0, LLMLB_SERVE_STATE_STARTING, lock, &holder);
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

/* --ready http: one probe of g_http_path on 127.0.0.1:`port` by the
 * library; what it got is printed when it differs from the last time. */
static int http_ready(uint16_t port) {
  static char last[256];
  char got[256] = "";
  int ready = llmlb_ready_http_probe(NULL, port, g_http_path, got, sizeof got);
  if (ready != 1 && strcmp(got, last) != 0) {
    fprintf(stderr, "launcher: not ready yet: %s\n", got);
    memcpy(last, got, sizeof last);
  }
  return ready == 1;
}

#ifndef _WIN32

/* The child's pid, which is also its process group id. */
static volatile sig_atomic_t g_child = 0;
/* Set by the handler: a stop was requested (the deadline clock starts). */
static volatile sig_atomic_t g_stopping = 0;
/* The stop signals forwarded on request, as a bit per signal number. */
static volatile sig_atomic_t g_asked = 0;
/* Set by the SIGUSR2 handler; the wait loop logs it. */
static volatile sig_atomic_t g_usr2 = 0;
/* The signal CMD died of (0: it exited). */
static int g_died_of = 0;

/* kill(2) is async-signal-safe. */
static void forward_signal(int sig) {
  pid_t child = (pid_t)g_child;
  g_stopping = 1;
  g_asked |= 1 << sig;
  if (child > 0) kill(-child, sig);
}

/* SIGHUP, SIGUSR1, SIGQUIT, SIGWINCH: CMD's to interpret, not a stop. */
static void pass_signal(int sig) {
  pid_t child = (pid_t)g_child;
  if (child > 0) kill(-child, sig);
}

static void note_usr2(int sig) {
  (void)sig;
  g_usr2 = 1;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Our service manager's NOTIFY_SOCKET (NULL: none). Read once; the launcher
 * never changes its own environment, only the child's. */
static const char *g_manager = NULL;

/* Fills *addr for NOTIFY_SOCKET-style `name` (a path, or on Linux `@name`
 * in the abstract namespace): its length, or 0 if it cannot be one. */
static socklen_t unix_address(const char *name, struct sockaddr_un *addr) {
  size_t len = strlen(name);
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (len == 0 || len >= sizeof addr->sun_path) return 0;
  memcpy(addr->sun_path, name, len);
#ifdef __linux__
  if (name[0] == '@') {
    addr->sun_path[0] = '\0';
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  }
#endif
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

/* Sends `text` (sd_notify assignments, one a line) to our own manager, if
 * one listens; a failure is a warning (the manager's timeouts decide). */
static void tell_manager(const char *text) {
  struct sockaddr_un addr;
  socklen_t addr_len;
  int fd;
  if (g_manager == NULL || g_manager[0] == '\0') return;
  addr_len = unix_address(g_manager, &addr);
  fd = addr_len == 0 ? -1 : socket(AF_UNIX, SOCK_DGRAM, 0);
  if (fd < 0 ||
      sendto(fd, text, strlen(text), 0, (const struct sockaddr *)&addr, addr_len) < 0)
    fprintf(stderr, "launcher: warning: cannot notify NOTIFY_SOCKET=%s: %s\n", g_manager,
            addr_len == 0 ? "not a socket address" : strerror(errno));
  if (fd >= 0) close(fd);
}

#ifdef __linux__
/* The parent of `pid` from /proc (0 if it cannot be read). */
static pid_t parent_of(pid_t pid) {
  char path[64], stat[512];
  const char *end;
  size_t n;
  int ppid = 0;
  FILE *f;
  snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
  if ((f = fopen(path, "r")) == NULL) return 0;
  n = fread(stat, 1, sizeof stat - 1, f);
  fclose(f);
  stat[n] = '\0';
  /* "pid (comm) state ppid ...": comm may hold spaces and parentheses. */
  if ((end = strrchr(stat, ')')) == NULL || sscanf(end + 1, " %*c %d", &ppid) != 1) return 0;
  return (pid_t)ppid;
}

/* Whether `pid` descends from the launcher: CMD's tree, with the orphans
 * we adopted as its subreaper. */
static int in_our_tree(pid_t pid) {
  pid_t self = getpid();
  int depth;
  for (depth = 0; depth < 4096 && pid > 1; depth++) {
    pid = parent_of(pid);
    if (pid == self) return 1;
  }
  return 0;
}
#endif

/* Whether CMD listens on `port` (--ready listen): on Linux a listener of
 * CMD's tree; elsewhere any listener (see the header comment). */
static int listening(uint16_t port) {
  uint32_t pid = 0;
  if (llmlb_port_listener(port, &pid) != LLMLB_STATUS_OK) return 0;
#ifdef __linux__
  return pid != 0 && in_our_tree((pid_t)pid);
#else
  return 1;
#endif
}

/* --ready notify: the socket CMD gets in NOTIFY_SOCKET (-1: none), and
 * that value: a socket file in the lock dir, which is 0700 and ours, so
 * another user cannot even send to it (an abstract name has no permissions
 * and is listed in /proc/net/unix for everyone). Linux falls back to an
 * abstract name where the lock dir's path is too long for sun_path; the
 * credentials check still applies there. */
static int g_notify = -1;
static char g_notify_name[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int g_notify_file = 0; /* g_notify_name is a file to unlink */

/* Opens g_notify for PORT, non-blocking and close-on-exec: 0, or -1 after
 * saying why. */
static int open_notify(uint16_t port) {
  struct sockaddr_un addr;
  socklen_t addr_len;
  char lock_path[4096];
  char *slash;
  size_t len = 0;
  struct timespec ts;
  int n = -1;
#ifdef __linux__
  int one = 1;
#endif
  clock_gettime(CLOCK_REALTIME, &ts);
  /* The lock dir is the lock file's: llmlb_lock_path resolves it exactly as
   * the acquire did. */
  if (llmlb_lock_path(NULL, port, lock_path, sizeof lock_path, &len) == LLMLB_STATUS_OK &&
      (slash = strrchr(lock_path, '/')) != NULL) {
    *slash = '\0';
    n = snprintf(g_notify_name, sizeof g_notify_name, "%s/notify_%u_%ld_%08lx.sock", lock_path,
                 (unsigned)port, (long)getpid(), (unsigned long)ts.tv_nsec);
  }
  if (n < 0 || (size_t)n >= sizeof g_notify_name) {
#ifdef __linux__
    snprintf(g_notify_name, sizeof g_notify_name, "@llmlb-launcher/%ld/%ld", (long)getpid(),
             (long)ts.tv_nsec);
#else
    fprintf(stderr, "launcher: the lock dir's path is too long for NOTIFY_SOCKET: set "
                    "LLMLB_LOCK_DIR to a shorter path\n");
    return -1;
#endif
  }
  addr_len = unix_address(g_notify_name, &addr);
  g_notify = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (addr_len == 0 || g_notify < 0 || fcntl(g_notify, F_SETFD, FD_CLOEXEC) != 0 ||
      fcntl(g_notify, F_SETFL, O_NONBLOCK) != 0 ||
#ifdef __linux__
      setsockopt(g_notify, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0 ||
      /* Linux creates the socket file with the socket's own mode: 0600
       * from its first instant, not only after the chmod below. */
      fchmod(g_notify, 0600) != 0 ||
#endif
      bind(g_notify, (const struct sockaddr *)&addr, addr_len) != 0) {
    fprintf(stderr, "launcher: cannot open NOTIFY_SOCKET %s: %s\n", g_notify_name,
            addr_len == 0 ? "path too long" : strerror(errno));
    return -1;
  }
  g_notify_file = g_notify_name[0] != '@';
  if (g_notify_file && chmod(g_notify_name, 0600) != 0) {
    fprintf(stderr, "launcher: cannot open NOTIFY_SOCKET %s: %s\n", g_notify_name,
            strerror(errno));
    return -1;
  }
  return 0;
}

static void close_notify(void) {
  if (g_notify_file) unlink(g_notify_name);
  g_notify_file = 0;
  if (g_notify >= 0) close(g_notify);
  g_notify = -1;
}

/* Closes the descriptors a datagram carried on a detached thread of its
 * own: the last close of one can block for as long as its sender chose (a
 * TCP socket with SO_LINGER and unacknowledged data), and READY handling
 * must never wait on it. Without a thread they are left open (a leak, never
 * a stall). */
struct fd_batch {
  size_t count;
  int fds[253]; /* SCM_MAX_FD */
};

static void *close_batch(void *arg) {
  struct fd_batch *batch = arg;
  size_t i;
  for (i = 0; i < batch->count; i++) close(batch->fds[i]);
  free(batch);
  return NULL;
}

static void close_later(struct fd_batch *batch) {
  pthread_t thread;
  pthread_attr_t attr;
  int started = 0;
  if (batch->count == 0) {
    free(batch);
    return;
  }
  if (pthread_attr_init(&attr) == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    started = pthread_create(&thread, &attr, close_batch, batch) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!started) free(batch); /* the descriptors stay open */
}

/* Whether `text` has the line `line`. */
static int has_line(const char *text, const char *line) {
  size_t len = strlen(line);
  while (text != NULL && *text != '\0') {
    if (strncmp(text, line, len) == 0 && (text[len] == '\n' || text[len] == '\0')) return 1;
    text = strchr(text, '\n');
    if (text != NULL) text++;
  }
  return 0;
}

/* Reads every pending datagram: 1 if one of CMD's tree said READY=1.
 * Descriptors passed along (systemd-notify's BARRIER=1 pipe) are closed
 * once the datagram is handled, off this thread (close_later), which
 * releases the waiting sender; it stays alive until then, so its place in
 * the tree can be checked when its READY=1 is read. */
static int notify_ready(void) {
  char text[4097];
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int) * 253)
#ifdef __linux__
               + CMSG_SPACE(sizeof(struct ucred))
#endif
    ];
  } control;
  int ready = 0;
  for (;;) {
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *c;
    struct fd_batch *batch;
    ssize_t n;
#ifdef __linux__
    int trusted = 0; /* without credentials: not provably from the tree */
#else
    int trusted = 1; /* only our user can reach the 0600 socket */
#endif
    iov.iov_base = text;
    iov.iov_len = sizeof text - 1;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
#ifdef MSG_CMSG_CLOEXEC
    n = recvmsg(g_notify, &msg, MSG_CMSG_CLOEXEC); /* non-blocking socket */
#else
    n = recvmsg(g_notify, &msg, 0);
#endif
    if (n < 0) return ready; /* EAGAIN: nothing more for now */
    batch = calloc(1, sizeof *batch); /* NULL: received descriptors stay open */
    for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_RIGHTS) {
        size_t i, count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < count; i++) {
          int fd;
          memcpy(&fd, CMSG_DATA(c) + i * sizeof fd, sizeof fd);
          if (batch != NULL && batch->count < sizeof batch->fds / sizeof batch->fds[0])
            batch->fds[batch->count++] = fd;
        }
      }
#ifdef __linux__
      else if (c->cmsg_type == SCM_CREDENTIALS) {
        struct ucred cred;
        memcpy(&cred, CMSG_DATA(c), sizeof cred);
        trusted = cred.uid == getuid() && in_our_tree(cred.pid);
      }
#endif
    }
    text[n] = '\0';
    if (trusted && has_line(text, "READY=1")) ready = 1;
    if (batch != NULL) close_later(batch);
  }
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
 * the lock's stop channel (llmlb_lock_wait_stop). Meanwhile it records
 * `ready` per `policy` (until stopping begins) and `stopping` once it
 * begins, telling our manager too. Returns CMD's exit code. */
static int run_to_end(LlmlbLock *lock, pid_t child, enum ready_policy policy, uint16_t port) {
  long deadline = -1, next_check = now_ms();
  int killed = 0, code = -1, status = 0, ready = 0, stopping = 0;
  int delay = LISTEN_FIRST_MS;
  for (;;) {
    int wait_ms = POLL_MS;
    if (code < 0) {
      pid_t got = waitpid(child, &status, WNOHANG);
      if (got == child) {
        if (WIFEXITED(status)) code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status)) code = 128 + (g_died_of = WTERMSIG(status));
        else code = 1;
      } else if (got < 0 && errno != EINTR) {
        perror("launcher: waitpid");
        code = 1;
      }
    }
    /* Before stopping is recorded, so an immediate command that exits at
     * once was ready first; never back from stopping to ready. */
    if (!ready && !stopping && !g_stopping) {
      if (policy == READY_IMMEDIATE) ready = 1;
      else if (policy == READY_NOTIFY) ready = notify_ready();
      else if (now_ms() >= next_check) {
        ready = policy == READY_HTTP ? http_ready(port) : listening(port);
        next_check = now_ms() + delay;
        delay = delay * 2 > LISTEN_MAX_MS ? LISTEN_MAX_MS : delay * 2;
      }
      if (ready) {
        char message[64];
        set_state(lock, LLMLB_SERVE_STATE_READY, "ready");
        snprintf(message, sizeof message, "MAINPID=%ld\nREADY=1\n", (long)getpid());
        tell_manager(message);
      } else if (policy == READY_LISTEN || policy == READY_HTTP) {
        long left = next_check - now_ms();
        wait_ms = left < 0 ? 0 : left < POLL_MS ? (int)left : POLL_MS;
      }
    }
    if (!stopping && (g_stopping || code >= 0)) {
      stopping = 1;
      set_state(lock, LLMLB_SERVE_STATE_STOPPING, "stopping");
      tell_manager("STOPPING=1\n");
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
    if (g_usr2) {
      g_usr2 = 0;
      fprintf(stderr, "launcher: received SIGUSR2; ignored (reserved for a future reload)\n");
    }
    {
      /* Where Windows' `llmlb stop` would arrive; here it is SIGTERM (the
       * handler above), and this is a sleep that a signal cuts short. */
      int requested = 0;
      llmlb_lock_wait_stop(lock, wait_ms, &requested);
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
  char port_text[8], fd_text[16], pid_text[24];
  pid_t child, parent = getpid();
  int code, lock_fd = -1, at, activated;
  enum ready_policy policy;
  const char *listen_pid = getenv("LISTEN_PID");
  char **cmd;

  if ((at = parse_ready(argc, argv, &policy)) == 0) return 2;
  if (argc < at + 3 || strcmp(argv[at + 1], "--") != 0) return usage(argv[0]);
  if (!parse_port(argv[at], &port)) {
    fprintf(stderr, "launcher: invalid port %s: ports are 1..=65535\n", argv[at]);
    return 2;
  }
  cmd = argv + at + 2;
  g_manager = getenv("NOTIFY_SOCKET");
  /* Socket activation meant for us (sd_listen_fds(3)): the descriptors are
   * not close-on-exec, so CMD inherits them as they are. */
  activated = listen_pid != NULL && getenv("LISTEN_FDS") != NULL &&
              strtol(listen_pid, NULL, 10) == (long)getpid();

  /* Block the handled signals until the child's pid is recorded and the
   * handlers are in place: one that arrives meanwhile (a HUP from
   * logrotate, a stop racing our start) waits instead of killing the
   * launcher with its lock taken, and none is lost between fork and the
   * handlers' installation. */
  sigemptyset(&forwarded);
  sigaddset(&forwarded, SIGTERM);
  sigaddset(&forwarded, SIGINT);
  sigaddset(&forwarded, SIGHUP);
  sigaddset(&forwarded, SIGUSR1);
  sigaddset(&forwarded, SIGUSR2);
  sigaddset(&forwarded, SIGQUIT);
  sigaddset(&forwarded, SIGWINCH);
  sigprocmask(SIG_BLOCK, &forwarded, &old_mask);

  if ((code = take_lock(port, &lock)) != 0) return code;
  if (policy == READY_NOTIFY && open_notify(port) != 0) {
    close_notify();
    llmlb_lock_release(lock);
    return 1;
  }

  /* CMD's tree inherits the lock (see the header comment). */
  status = llmlb_lock_fd(lock, &lock_fd);
  if (status != LLMLB_STATUS_OK) {
    fprintf(stderr, "launcher: %s\n", llmlb_last_error());
    close_notify();
    llmlb_lock_release(lock);
    return 1;
  }
#ifdef __linux__
  /* Orphaned grandchildren come to us, so group_gone sees them die even
   * where init does not reap. */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
#endif

  child = fork();
  if (child < 0) {
    perror("launcher: fork");
    close_notify();
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
    /* Our manager's socket and watchdog are ours (we report to it); CMD
     * gets our own socket with --ready notify. */
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    if (policy == READY_NOTIFY) setenv("NOTIFY_SOCKET", g_notify_name, 1);
    if (activated) {
      /* The sockets are CMD's now: LISTEN_PID must name it. */
      snprintf(pid_text, sizeof pid_text, "%ld", (long)getpid());
      setenv("LISTEN_PID", pid_text, 1);
    } else {
      unsetenv("LISTEN_PID");
      unsetenv("LISTEN_FDS");
      unsetenv("LISTEN_FDNAMES");
    }
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    execvp(cmd[0], cmd);
    fprintf(stderr, "launcher: cannot run %s: %s\n", cmd[0], strerror(errno));
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
  /* One handler at a time: g_asked is updated by read-modify-write. */
  action.sa_mask = forwarded;
  sigaction(SIGTERM, &action, NULL);
  sigaction(SIGINT, &action, NULL);
  action.sa_handler = pass_signal;
  sigaction(SIGHUP, &action, NULL);
  sigaction(SIGUSR1, &action, NULL);
  sigaction(SIGQUIT, &action, NULL);
  sigaction(SIGWINCH, &action, NULL);
  action.sa_handler = note_usr2;
  sigaction(SIGUSR2, &action, NULL);
  sigprocmask(SIG_SETMASK, &old_mask, NULL);

  code = run_to_end(lock, child, policy, port);
  close_notify();
  status = llmlb_lock_release(lock);
  if (status != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: releasing the lock: %s\n", llmlb_last_error());
  if ((g_died_of == SIGTERM || g_died_of == SIGINT) && (g_asked & (1 << g_died_of))) {
    /* Asked to stop, and CMD died of the signal we forwarded: so do we,
     * with everything released, as a shell does (and as `llmlb serve`). */
    sigset_t own;
    fflush(stdout);
    signal(g_died_of, SIG_DFL);
    sigemptyset(&own);
    sigaddset(&own, g_died_of);
    sigprocmask(SIG_UNBLOCK, &own, NULL);
    raise(g_died_of);
  }
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
static int run_to_end(LlmlbLock *lock, const PROCESS_INFORMATION *child, HANDLE job,
                      enum ready_policy policy, uint16_t port) {
  ULONGLONG deadline = 0, next_check = GetTickCount64();
  int stopping = 0, killed = 0, ready = 0;
  DWORD code = 1, delay = LISTEN_FIRST_MS, wait_ms;
  /* Before the first look at CMD, which may have exited already. */
  if (policy == READY_IMMEDIATE) {
    ready = 1;
    set_state(lock, LLMLB_SERVE_STATE_READY, "ready");
  }
  for (;;) {
    int requested = 0;
    if (WaitForSingleObject(child->hProcess, 0) == WAIT_OBJECT_0) {
      if (!stopping) set_state(lock, LLMLB_SERVE_STATE_STOPPING, "stopping");
      if (!GetExitCodeProcess(child->hProcess, &code)) code = 1;
      return (int)code;
    }
    wait_ms = POLL_MS;
    if (!ready && !stopping) {
      /* --ready listen: any listener counts (no tree-aware lookup here). */
      if (GetTickCount64() >= next_check) {
        ready = policy == READY_HTTP ? http_ready(port)
                                     : llmlb_port_listener(port, NULL) == LLMLB_STATUS_OK;
        next_check = GetTickCount64() + delay;
        delay = delay * 2 > LISTEN_MAX_MS ? LISTEN_MAX_MS : delay * 2;
      }
      if (ready) set_state(lock, LLMLB_SERVE_STATE_READY, "ready");
      else if (next_check <= GetTickCount64()) wait_ms = 0;
      else if (next_check - GetTickCount64() < POLL_MS) wait_ms = (DWORD)(next_check - GetTickCount64());
    }
    llmlb_lock_wait_stop(lock, (uint32_t)wait_ms, &requested);
    if ((requested || g_interrupted) && !stopping) {
      stopping = 1;
      set_state(lock, LLMLB_SERVE_STATE_STOPPING, "stopping");
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
  int i, code, at;
  enum ready_policy policy;
  HANDLE job;
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits;
  STARTUPINFOA startup;
  PROCESS_INFORMATION child;

  if ((at = parse_ready(argc, argv, &policy)) == 0) return 2;
  if (policy == READY_NOTIFY) {
    fprintf(stderr, "launcher: --ready notify is not supported on Windows (no sd_notify); use "
                    "listen or immediate\n");
    return 2;
  }
  if (argc < at + 3 || strcmp(argv[at + 1], "--") != 0) return usage(argv[0]);
  if (!parse_port(argv[at], &port)) {
    fprintf(stderr, "launcher: invalid port %s: ports are 1..=65535\n", argv[at]);
    return 2;
  }
  for (i = at + 2; i < argc; i++) {
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
    fprintf(stderr, "launcher: cannot run %s (error %lu)\n", argv[at + 2], err);
    llmlb_lock_release(lock);
    return err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND ? 127 : 126;
  }
  if (!AssignProcessToJobObject(job, child.hProcess)) {
    fprintf(stderr, "launcher: cannot put %s in a job object (error %lu)\n", argv[at + 2],
            GetLastError());
    TerminateProcess(child.hProcess, 1);
    llmlb_lock_release(lock);
    return 126;
  }
  ResumeThread(child.hThread);
  CloseHandle(child.hThread);

  code = run_to_end(lock, &child, job, policy, port);
  CloseHandle(job); /* kill-on-close: what CMD left behind ends here */
  CloseHandle(child.hProcess);
  if (llmlb_lock_release(lock) != LLMLB_STATUS_OK)
    fprintf(stderr, "launcher: warning: releasing the lock: %s\n", llmlb_last_error());
  return code;
}

#endif /* _WIN32 */
