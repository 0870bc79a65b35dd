/*
 * The wrapper's per-cycle calls (try-once acquire, release) without ctypes.
 *
 * A ctypes call converts its arguments into fresh objects, prepares a libffi
 * call interface and frees it again, on every call: that alone costs more
 * than a fifth of the C cycle it wraps, which is the wrapper's whole budget
 * (issue 12: the Python cycle <= 1.2x the C cycle). Here each call is one
 * plain C call between taking the arguments apart and making the status an
 * int.
 *
 * Optional: llmlb_lock/__init__.py falls back to ctypes when this module is
 * missing (a checkout used without `pip install`). It links to nothing: the
 * wrapper hands it the addresses of the functions in the library ctypes
 * loaded (bind), so both paths always call the same library, whichever
 * LLMLB_LOCK_LIB or packaged copy that is.
 *
 * Private: every argument is an address the wrapper owns (its out-parameter
 * objects, a handle the library returned). Called with anything else it
 * crashes, as ctypes would.
 *
 * Stable ABI (Py_LIMITED_API, CPython >= 3.8): the one abi3 wheel stays one.
 * Each call releases the GIL around the library call, as ctypes does.
 */
#define Py_LIMITED_API 0x03080000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/* LlmlbLockInfo (include/llmlb_lock.h), as the wrapper's _Info mirrors it. */
typedef struct {
  uint32_t pid;
  uint16_t port;
  int64_t started_at_unix_ms;
  int64_t serve_state_since_unix_ms;
  int serve_state;
} lock_info;

typedef int (*acquire_fn)(const char *lock_dir, uint16_t port, void **out_lock, lock_info *out_other);
typedef int (*dir_acquire_fn)(const void *dir, uint16_t port, void **out_lock, lock_info *out_other);
typedef int (*release_fn)(void *lock);

static acquire_fn g_acquire;
static dir_acquire_fn g_dir_acquire;
static release_fn g_release;

/* The address in args[i], an int; NULL with an exception set if it is not
 * one, or is 0 (never a valid argument here). */
static void *address(PyObject *args, Py_ssize_t i) {
  PyObject *o = PyTuple_GetItem(args, i);
  void *p;
  if (o == NULL) return NULL;
  p = PyLong_AsVoidPtr(o);
  if (p == NULL && !PyErr_Occurred())
    PyErr_SetString(PyExc_ValueError, "llmlb_lock._speedups: a NULL address");
  return p;
}

/* args is a tuple of n items (a METH_VARARGS call's, or the one argument of
 * a METH_O call that takes its arguments as a tuple). */
static int arity(PyObject *args, Py_ssize_t n, const char *name) {
  if (PyTuple_Check(args) && PyTuple_Size(args) == n) return 0;
  PyErr_Format(PyExc_TypeError, "%s() takes a tuple of %zd items", name, n);
  return -1;
}

/* bind(acquire, dir_acquire, release): the library's function addresses. */
static PyObject *bind(PyObject *self, PyObject *args) {
  void *a, *d, *r;
  (void)self;
  if (arity(args, 3, "bind") != 0) return NULL;
  if ((a = address(args, 0)) == NULL) return NULL;
  if ((d = address(args, 1)) == NULL) return NULL;
  if ((r = address(args, 2)) == NULL) return NULL;
  /* Object pointers to function pointers: what dlsym's callers do too. */
  g_acquire = (acquire_fn)(uintptr_t)a;
  g_dir_acquire = (dir_acquire_fn)(uintptr_t)d;
  g_release = (release_fn)(uintptr_t)r;
  Py_RETURN_NONE;
}

static int bound(void) {
  if (g_release != NULL) return 0;
  PyErr_SetString(PyExc_RuntimeError, "llmlb_lock._speedups: bind() was not called");
  return -1;
}

/* The port: the wrapper has checked it (1..=65535); checked again here
 * only for the type. */
static int port_arg(PyObject *args, Py_ssize_t i, uint16_t *port) {
  PyObject *o = PyTuple_GetItem(args, i);
  unsigned long v;
  if (o == NULL) return -1;
  v = PyLong_AsUnsignedLong(o);
  if (v == (unsigned long)-1 && PyErr_Occurred()) return -1;
  if (v > UINT16_MAX) {
    PyErr_SetString(PyExc_ValueError, "llmlb_lock._speedups: port out of range");
    return -1;
  }
  *port = (uint16_t)v;
  return 0;
}

/* Not a library status: OK, and out_other holds the info of the dead holder
 * the lock was reclaimed from (the wrapper's _OK_RECLAIMED). A clean acquire
 * returns OK, so the wrapper need not look at out_other at all. */
#define OK_RECLAIMED (-1)

static PyObject *acquire_result(int status, const lock_info *other) {
  if (status == 0 && (other->pid != 0 || other->port != 0 || other->started_at_unix_ms != 0))
    status = OK_RECLAIMED;
  return PyLong_FromLong(status);
}

/* dir_acquire((dir, port, out_lock, out_other)) -> status or OK_RECLAIMED
 *
 * One tuple, not four arguments: each PortLock makes it once, so a call
 * builds no argument tuple (METH_FASTCALL is not in the 3.8 stable ABI). */
static PyObject *dir_acquire(PyObject *self, PyObject *args) {
  void *dir, *out_lock, *out_other;
  uint16_t port;
  int status;
  PyThreadState *ts;
  (void)self;
  if (bound() != 0 || arity(args, 4, "dir_acquire") != 0) return NULL;
  if ((dir = address(args, 0)) == NULL || port_arg(args, 1, &port) != 0 ||
      (out_lock = address(args, 2)) == NULL || (out_other = address(args, 3)) == NULL)
    return NULL;
  ts = PyEval_SaveThread();
  status = g_dir_acquire(dir, port, (void **)out_lock, (lock_info *)out_other);
  PyEval_RestoreThread(ts);
  return acquire_result(status, (const lock_info *)out_other);
}

/* acquire((lock_dir: bytes or None, port, out_lock, out_other)) -> status
 * or OK_RECLAIMED; one tuple, as dir_acquire's. */
static PyObject *acquire(PyObject *self, PyObject *args) {
  PyObject *dir_obj;
  const char *dir = NULL;
  void *out_lock, *out_other;
  uint16_t port;
  int status;
  PyThreadState *ts;
  (void)self;
  if (bound() != 0 || arity(args, 4, "acquire") != 0) return NULL;
  dir_obj = PyTuple_GetItem(args, 0);
  if (dir_obj == NULL) return NULL;
  if (dir_obj != Py_None) {
    /* NUL-free bytes (the wrapper's _dir_arg made it); kept alive by args
     * for the whole call. */
    if ((dir = PyBytes_AsString(dir_obj)) == NULL) return NULL;
  }
  if (port_arg(args, 1, &port) != 0 || (out_lock = address(args, 2)) == NULL ||
      (out_other = address(args, 3)) == NULL)
    return NULL;
  ts = PyEval_SaveThread();
  status = g_acquire(dir, port, (void **)out_lock, (lock_info *)out_other);
  PyEval_RestoreThread(ts);
  return acquire_result(status, (const lock_info *)out_other);
}

/* release(out_lock) -> status: releases the lock whose handle an acquire
 * wrote to out_lock (the wrapper keeps it there while it holds the lock, so
 * one argument serves every release of a PortLock). */
static PyObject *release(PyObject *self, PyObject *arg) {
  void **out_lock, *lock;
  int status;
  PyThreadState *ts;
  (void)self;
  if (bound() != 0) return NULL;
  out_lock = (void **)PyLong_AsVoidPtr(arg);
  if (out_lock == NULL) {
    if (!PyErr_Occurred())
      PyErr_SetString(PyExc_ValueError, "llmlb_lock._speedups: a NULL address");
    return NULL;
  }
  if ((lock = *out_lock) == NULL) {
    PyErr_SetString(PyExc_ValueError, "llmlb_lock._speedups: release of a NULL lock");
    return NULL;
  }
  ts = PyEval_SaveThread();
  status = g_release(lock);
  PyEval_RestoreThread(ts);
  return PyLong_FromLong(status);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(acquire, dir_acquire, release): the library's functions."},
    {"acquire", acquire, METH_O,
     "acquire((lock_dir, port, out_lock, out_other)) -> status, or -1: OK, reclaimed"},
    {"dir_acquire", dir_acquire, METH_O,
     "dir_acquire((dir, port, out_lock, out_other)) -> status, or -1: OK, reclaimed"},
    {"release", release, METH_O, "release(out_lock) -> status"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "llmlb_lock._speedups",
    "The wrapper's per-cycle C calls without ctypes (private).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
