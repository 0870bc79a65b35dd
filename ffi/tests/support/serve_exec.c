/*
 * serve_exec LAYOUT PORT [CMD ARGS...]: calls llmlb_serve_exec as a C
 * program built against another version of the header would, and exits
 * with what it returns. Run by ffi/tests/serve_exec.rs (not an API test of
 * its own: it blocks and installs serve's signal handlers).
 *
 * LAYOUT:
 *   current     this header's struct, zeroed: every default
 *   oldest      an older caller's struct that ends after `port`: every byte
 *               after it is garbage, which the library must not read
 *   newer-zero  a newer caller's longer struct whose unknown fields are 0
 *   newer-set   the same with one unknown field set (refused, exit 2)
 *   die         current, with die_of_stop_signal
 *   null-opts, null-argv   NULL for that argument
 * No CMD: an empty argv.
 */
#include "llmlb_lock.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A newer header's struct: this one's, then fields this library lacks. */
struct newer {
  LlmlbServeOptions known;
  uint64_t unknown[3];
};

int main(int argc, char **argv) {
  struct newer big;
  const char *const *cmd;
  const char *layout;

  if (argc < 3) {
    fputs("usage: serve_exec LAYOUT PORT [CMD ARGS...]\n", stderr);
    return 64;
  }
  layout = argv[1];
  cmd = (const char *const *)&argv[3];
  memset(&big, 0, sizeof big);
  big.known.size = sizeof big.known;
  if (strcmp(layout, "oldest") == 0) {
    memset(&big, 0xA5, sizeof big);
    big.known.size = offsetof(LlmlbServeOptions, port) + sizeof big.known.port;
  } else if (strcmp(layout, "newer-zero") == 0) {
    big.known.size = sizeof big;
  } else if (strcmp(layout, "newer-set") == 0) {
    big.known.size = sizeof big;
    big.unknown[1] = 1;
  } else if (strcmp(layout, "die") == 0) {
    big.known.die_of_stop_signal = 1;
  } else if (strcmp(layout, "null-opts") == 0) {
    return llmlb_serve_exec(NULL, cmd);
  } else if (strcmp(layout, "null-argv") == 0) {
    big.known.port = (uint16_t)atoi(argv[2]);
    return llmlb_serve_exec(&big.known, NULL);
  } else if (strcmp(layout, "current") != 0) {
    fprintf(stderr, "serve_exec: unknown layout %s\n", layout);
    return 64;
  }
  big.known.port = (uint16_t)atoi(argv[2]);
  return llmlb_serve_exec(&big.known, cmd);
}
