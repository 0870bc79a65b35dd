/*
 * launcher [OPTIONS] PORT -- CMD [ARGS...]
 * launcher [OPTIONS] --port PORT -- CMD [ARGS...]
 *
 * Runs CMD under the per-port lock exactly as `llmlb serve --port PORT
 * [OPTIONS] -- CMD` does, through one call, llmlb_serve_exec: the lock, the
 * readiness policy, signals, the pidfile, handover and reload, the proxy,
 * the service manager's notifications and the drain all happen in the
 * library. This file only parses the command line. OPTIONS, before or after
 * PORT, are serve's (SECS: seconds, decimals allowed):
 *   -p/--port P  -H/--host H  -w/--wait SECS  --ready WHEN  --ready-timeout SECS
 *   --pidfile PATH  --pass-socket  --proxy  --backend-port P  --max-connections N
 *   --replace  --replace-timeout SECS  --replace-grace SECS  --drain-timeout SECS
 * so `llmlb reload`, which starts this command line again with --replace
 * added before `--`, works for it as for serve. The lock dir is
 * LLMLB_LOCK_DIR, else the per-user default. Exits as serve would (usage
 * errors 2, a held port 1, else CMD's code; dies of the SIGTERM or SIGINT
 * that stopped CMD).
 *
 * Build against the installed library (README "Install"):
 *   cc -o launcher ffi/examples/launcher.c $(pkg-config --cflags --libs llmlb_lock)
 * or from the repository (after `cargo build --release -p llmlb-lock-ffi`):
 *   cc -std=c11 -Wall -Wextra -pedantic -Iinclude ffi/examples/launcher.c \
 *      target/release/libllmlb_lock.a -lpthread -ldl -lm -o launcher
 * Windows (mingw-w64): the same with libllmlb_lock.a from
 * target/x86_64-pc-windows-gnu/release and -lws2_32 -lntdll -luserenv -lbcrypt.
 */
#include "llmlb_lock.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s [--ready WHEN] [serve's options] PORT -- CMD [ARGS...]\n", argv0);
  return 2;
}

/* An unsigned number in [min, max] into *out: 1, or 0 after saying why not. */
static int number(const char *flag, const char *text, unsigned long min, unsigned long max,
                  unsigned long *out) {
  char *end = NULL;
  errno = 0;
  *out = strtoul(text, &end, 10);
  if (text[0] >= '0' && text[0] <= '9' && errno == 0 && *end == '\0' && *out >= min && *out <= max)
    return 1;
  fprintf(stderr, "launcher: invalid %s %s: give a number in %lu..%lu\n", flag, text, min, max);
  return 0;
}

/* Seconds (decimals allowed) as the struct's milliseconds: 0 seconds is
 * LLMLB_SERVE_ZERO_MS (0 there means the default), too many for 32 bits is
 * LLMLB_WAIT_FOREVER, as serve takes an absurdly large value for no limit. */
static int seconds(const char *flag, const char *text, uint32_t *out) {
  char *end = NULL;
  double ms;
  errno = 0;
  ms = strtod(text, &end) * 1000.0;
  if (text[0] == '\0' || *end != '\0' || errno == ERANGE || !isfinite(ms) || ms < 0.0) {
    fprintf(stderr, "launcher: invalid %s %s: give seconds, 0 or more (e.g. 10 or 0.5)\n", flag,
            text);
    return 0;
  }
  if (ms == 0.0) *out = LLMLB_SERVE_ZERO_MS;
  else if (ms >= (double)LLMLB_SERVE_ZERO_MS) *out = LLMLB_WAIT_FOREVER;
  else *out = (uint32_t)ms + ((double)(uint32_t)ms < ms); /* rounded up */
  return 1;
}

int main(int argc, char **argv) {
  LlmlbServeOptions o;
  unsigned long n;
  int i;
  const char *port = NULL;

  memset(&o, 0, sizeof o);
  o.size = sizeof o;
  o.die_of_stop_signal = 1; /* the launcher is this process's main */
  o.log = 1;
  o.socket_activation = 1;
  for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
    const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
    uint8_t *on = NULL;
    if (strcmp(flag, "-p") == 0) flag = "--port"; /* serve's short forms */
    else if (strcmp(flag, "-H") == 0) flag = "--host";
    else if (strcmp(flag, "-w") == 0) flag = "--wait";
    if (strcmp(flag, "--pass-socket") == 0) on = &o.pass_socket;
    else if (strcmp(flag, "--proxy") == 0) on = &o.proxy;
    else if (strcmp(flag, "--replace") == 0) on = &o.replace;
    if (on != NULL) {
      *on = 1;
      continue;
    }
    if (strncmp(flag, "--", 2) != 0) {
      if (port != NULL) return usage(argv[0]);
      port = flag;
      continue;
    }
    if (value == NULL || strcmp(value, "--") == 0) {
      fprintf(stderr, "launcher: %s needs a value\n", flag);
      return usage(argv[0]);
    }
    i++;
    if (strcmp(flag, "--port") == 0) {
      if (port != NULL) return usage(argv[0]);
      port = value;
    } else if (strcmp(flag, "--host") == 0) o.host = value;
    else if (strcmp(flag, "--ready") == 0) o.ready = value;
    else if (strcmp(flag, "--pidfile") == 0) o.pidfile = value;
    else if (strcmp(flag, "--backend-port") == 0) {
      if (!number(flag, value, 1, 65535, &n)) return 2;
      o.backend_port = (uint16_t)n;
    } else if (strcmp(flag, "--max-connections") == 0) {
      if (!number(flag, value, 1, 4294967295UL, &n)) return 2;
      o.max_connections = (uint32_t)n;
    } else {
      uint32_t *ms = strcmp(flag, "--ready-timeout") == 0     ? &o.ready_timeout_ms
                     : strcmp(flag, "--wait") == 0            ? &o.wait_ms
                     : strcmp(flag, "--replace-timeout") == 0 ? &o.replace_timeout_ms
                     : strcmp(flag, "--replace-grace") == 0   ? &o.replace_grace_ms
                     : strcmp(flag, "--drain-timeout") == 0   ? &o.drain_timeout_ms
                                                              : NULL;
      if (ms == NULL) {
        fprintf(stderr, "launcher: unknown option %s\n", flag);
        return usage(argv[0]);
      }
      if (!seconds(flag, value, ms)) return 2;
    }
  }
  if (port == NULL || i + 1 >= argc) return usage(argv[0]);
  if (!number("PORT", port, 1, 65535, &n)) return 2;
  o.port = (uint16_t)n;
  return llmlb_serve_exec(&o, (const char *const *)&argv[i + 1]);
}
