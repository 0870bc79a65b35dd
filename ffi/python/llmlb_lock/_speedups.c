/*
 * The wrapper's per-cycle calls (try-once acquire, release) without ctypes.
 *
 * A ctypes call converts its arguments into fresh objects, prepares a libffi
 * call interface and frees it again, on every call: that alone costs more
 * than a fifth of the C cycle it wraps, which is the wrapper's whole budget
 * (issue 12: the Python cycle <= 1.2x the C cycle). Here a try-once acquire
 * is one call of a Cycle object that PortLock makes once: it reads its
 * arguments from its own C fields (no tuple taken apart, no integer
 * converted), registers the call with the lock dir's DirCell (what
 * LockDir.close() waits on) and makes the one library call. The Python
 * code around it runs between system calls, when the CPU's caches and
 * branch predictors are cold, so every bytecode saved there counts several
 * times (issue 29 §3).
 *
 * Optional: llmlb_lock/__init__.py falls back to ctypes when this module is
 * missing (a checkout used without `pip install`), with Python twins of
 * Cycle and DirCell. It links to nothing: the wrapper hands it the addresses
 * of the functions in the library ctypes loaded (bind), so both paths always
 * call the same library, whichever LLMLB_LOCK_LIB or packaged copy that is.
 *
 * Private: every address is one the wrapper owns (its out-parameter
 * objects, a handle the library returned). Called with anything else it
 * crashes, as ctypes would.
 *
 * Stable ABI (Py_LIMITED_API, CPython >= 3.8): the one abi3 wheel stays one.
 * Each call releases the GIL around the library call, as ctypes does; every
 * field below is read and written only while holding the GIL, which makes
 * each method atomic with respect to the others.
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

/* Not library statuses (the wrapper's _OK_RECLAIMED, _DIR_CLOSED): OK, and
 * out_other holds the info of the dead holder the lock was reclaimed from (a
 * clean acquire returns OK, so the wrapper need not look at out_other at
 * all); the lock dir was closed, nothing was called. */
#define OK_RECLAIMED (-1)
#define DIR_CLOSED (-2)

/* ---- DirCell: a LockDir's handle and the calls in progress on it ---- */

typedef struct {
  PyObject_HEAD
  void *handle;      /* the LlmlbLockDir; NULL once closing began */
  Py_ssize_t active; /* calls in progress through handle */
  Py_ssize_t closing; /* close() calls waiting for active to reach 0 */
  PyObject *on_idle; /* called when the last call leaves while closing */
} DirCell;

static PyTypeObject *dir_cell_type;

/* DirCell(handle, on_idle) */
static PyObject *dir_cell_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyObject *handle_obj, *on_idle;
  void *handle;
  DirCell *self;
  (void)kwargs;
  if (!PyArg_UnpackTuple(args, "DirCell", 2, 2, &handle_obj, &on_idle)) return NULL;
  handle = PyLong_AsVoidPtr(handle_obj);
  if (handle == NULL) {
    if (!PyErr_Occurred())
      PyErr_SetString(PyExc_ValueError, "llmlb_lock._speedups: a NULL address");
    return NULL;
  }
  if ((self = (DirCell *)PyType_GenericAlloc(type, 0)) == NULL) return NULL;
  self->handle = handle;
  self->active = 0;
  self->closing = 0;
  Py_INCREF(on_idle);
  self->on_idle = on_idle;
  return (PyObject *)self;
}

static void dir_cell_dealloc(PyObject *self) {
  PyTypeObject *type = Py_TYPE(self);
  Py_XDECREF(((DirCell *)self)->on_idle);
  PyObject_Free(self);
  Py_DECREF(type); /* a heap type's instances own a reference to it */
}

/* A call leaves: the closer, if one waits, is told once the last has left.
 * Never fails: the call's own outcome must reach the wrapper (an acquire
 * that took the lock is held whatever happens here). */
static void dir_cell_leave_call(DirCell *self) {
  if (--self->active == 0 && self->closing) {
    PyObject *r = PyObject_CallObject(self->on_idle, NULL);
    if (r == NULL)
      PyErr_WriteUnraisable(self->on_idle);
    else
      Py_DECREF(r);
  }
}

/* enter() -> the handle (an int), registered as a call in progress, or None
 * when the dir is closed (nothing registered). */
static PyObject *dir_cell_enter(PyObject *self_, PyObject *unused) {
  DirCell *self = (DirCell *)self_;
  (void)unused;
  if (self->handle == NULL) Py_RETURN_NONE;
  self->active++;
  return PyLong_FromVoidPtr(self->handle);
}

/* leave(): the end of a call enter() registered. */
static PyObject *dir_cell_leave(PyObject *self, PyObject *unused) {
  (void)unused;
  dir_cell_leave_call((DirCell *)self);
  Py_RETURN_NONE;
}

/* close() -> the handle (an int), or None if already closed: no new call
 * gets it from now on; the caller waits until active is 0, then frees it,
 * then calls done_closing(). */
static PyObject *dir_cell_close(PyObject *self_, PyObject *unused) {
  DirCell *self = (DirCell *)self_;
  void *handle = self->handle;
  (void)unused;
  self->handle = NULL;
  self->closing++;
  if (handle == NULL) Py_RETURN_NONE;
  return PyLong_FromVoidPtr(handle);
}

static PyObject *dir_cell_done_closing(PyObject *self, PyObject *unused) {
  (void)unused;
  ((DirCell *)self)->closing--;
  Py_RETURN_NONE;
}

static PyObject *dir_cell_get_active(PyObject *self, void *closure) {
  (void)closure;
  return PyLong_FromSsize_t(((DirCell *)self)->active);
}

static PyMethodDef dir_cell_methods[] = {
    {"enter", dir_cell_enter, METH_NOARGS, "enter() -> handle, or None if closed"},
    {"leave", dir_cell_leave, METH_NOARGS, "leave(): a call entered has ended"},
    {"close", dir_cell_close, METH_NOARGS, "close() -> handle, or None if closed before"},
    {"done_closing", dir_cell_done_closing, METH_NOARGS, "done_closing(): close() has finished"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef dir_cell_getset[] = {
    {"active", dir_cell_get_active, NULL, "calls in progress", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Filled in by PyInit__speedups: ISO C has no constant that turns a
 * function pointer into PyType_Slot's void *. */
static PyType_Slot dir_cell_slots[5];

static PyType_Spec dir_cell_spec = {
    "llmlb_lock._speedups.DirCell", sizeof(DirCell), 0, Py_TPFLAGS_DEFAULT, dir_cell_slots,
};

/* ---- Cycle: one PortLock's try-once acquire ---- */

typedef struct {
  PyObject_HEAD
  DirCell *cell;   /* through a LockDir; or NULL: by path */
  PyObject *path;  /* by path: NUL-free bytes, or None for the default dir */
  PyObject *lock_obj, *other_obj; /* own the memory out_lock and out_other point into */
  void **out_lock;
  lock_info *out_other;
  uint16_t port;
} Cycle;

static PyTypeObject *cycle_type;

/* ctypes.addressof, looked up at import: the wrapper's out-parameters are
 * ctypes objects, and their addresses are only known through it. */
static PyObject *g_addressof;

/* The address of the memory of ctypes object obj; NULL with an exception
 * set on failure. */
static void *ctypes_address(PyObject *obj) {
  PyObject *r = PyObject_CallFunctionObjArgs(g_addressof, obj, NULL);
  void *p;
  if (r == NULL) return NULL;
  p = PyLong_AsVoidPtr(r);
  Py_DECREF(r);
  if (p == NULL && !PyErr_Occurred())
    PyErr_SetString(PyExc_ValueError, "llmlb_lock._speedups: a NULL address");
  return p;
}

/* Cycle(dir, port, out_lock, out_other): dir is a DirCell, or the path
 * (bytes or None); out_lock (a c_void_p) and out_other (an _Info) the ctypes
 * objects the library writes into, kept alive by the Cycle. */
static PyObject *cycle_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  PyObject *dir, *port_obj, *lock_obj, *other_obj;
  unsigned long port;
  void *out_lock, *out_other;
  Cycle *self;
  (void)kwargs;
  if (!PyArg_UnpackTuple(args, "Cycle", 4, 4, &dir, &port_obj, &lock_obj, &other_obj))
    return NULL;
  if (Py_TYPE(dir) != dir_cell_type && dir != Py_None && !PyBytes_Check(dir)) {
    PyErr_SetString(PyExc_TypeError, "llmlb_lock._speedups: dir is a DirCell, bytes or None");
    return NULL;
  }
  port = PyLong_AsUnsignedLong(port_obj);
  if (port == (unsigned long)-1 && PyErr_Occurred()) return NULL;
  if (port > UINT16_MAX) {
    PyErr_SetString(PyExc_ValueError, "llmlb_lock._speedups: port out of range");
    return NULL;
  }
  if ((out_lock = ctypes_address(lock_obj)) == NULL) return NULL;
  if ((out_other = ctypes_address(other_obj)) == NULL) return NULL;
  if ((self = (Cycle *)PyType_GenericAlloc(type, 0)) == NULL) return NULL;
  Py_INCREF(dir);
  if (Py_TYPE(dir) == dir_cell_type) {
    self->cell = (DirCell *)dir;
    self->path = NULL;
  } else {
    self->cell = NULL;
    self->path = dir;
  }
  Py_INCREF(lock_obj);
  self->lock_obj = lock_obj;
  Py_INCREF(other_obj);
  self->other_obj = other_obj;
  self->out_lock = (void **)out_lock;
  self->out_other = (lock_info *)out_other;
  self->port = (uint16_t)port;
  return (PyObject *)self;
}

static void cycle_dealloc(PyObject *self_) {
  Cycle *self = (Cycle *)self_;
  PyTypeObject *type = Py_TYPE(self_);
  Py_XDECREF(self->cell);
  Py_XDECREF(self->path);
  Py_XDECREF(self->lock_obj);
  Py_XDECREF(self->other_obj);
  PyObject_Free(self_);
  Py_DECREF(type);
}

/* cycle() -> status, OK_RECLAIMED or DIR_CLOSED: one try-once acquire. */
static PyObject *cycle_call(PyObject *self_, PyObject *args, PyObject *kwargs) {
  Cycle *self = (Cycle *)self_;
  int status;
  PyThreadState *ts;
  (void)args;
  (void)kwargs;
  if (bound() != 0) return NULL;
  if (self->cell != NULL) {
    DirCell *cell = self->cell;
    void *dir = cell->handle;
    if (dir == NULL) return PyLong_FromLong(DIR_CLOSED);
    /* Registered while holding the GIL, as close() reads it: either
     * close() waits for this call, or this call saw the handle gone. */
    cell->active++;
    ts = PyEval_SaveThread();
    status = g_dir_acquire(dir, self->port, self->out_lock, self->out_other);
    PyEval_RestoreThread(ts);
    dir_cell_leave_call(cell);
  } else {
    /* The bytes object lives as long as self: its buffer is stable. */
    const char *dir = self->path == Py_None ? NULL : PyBytes_AsString(self->path);
    if (dir == NULL && self->path != Py_None) return NULL;
    ts = PyEval_SaveThread();
    status = g_acquire(dir, self->port, self->out_lock, self->out_other);
    PyEval_RestoreThread(ts);
  }
  if (status == 0 && (self->out_other->pid != 0 || self->out_other->port != 0 ||
                      self->out_other->started_at_unix_ms != 0))
    status = OK_RECLAIMED;
  return PyLong_FromLong(status);
}

static PyType_Slot cycle_slots[4]; /* filled in by PyInit__speedups */

static PyType_Spec cycle_spec = {
    "llmlb_lock._speedups.Cycle", sizeof(Cycle), 0, Py_TPFLAGS_DEFAULT, cycle_slots,
};

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
    {"release", release, METH_O, "release(out_lock) -> status"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "llmlb_lock._speedups",
    "The wrapper's per-cycle C calls without ctypes (private).", -1, methods,
    NULL, NULL, NULL, NULL,
};

/* A function as PyType_Slot's pfunc (through an integer: a direct cast
 * between function and object pointers is not ISO C). */
#define SLOT(id, fn) ((PyType_Slot){(id), (void *)(uintptr_t)(fn)})

PyMODINIT_FUNC PyInit__speedups(void) {
  PyObject *m = PyModule_Create(&module), *ctypes_module;
  if (m == NULL) return NULL;
  if ((ctypes_module = PyImport_ImportModule("ctypes")) == NULL) goto fail;
  g_addressof = PyObject_GetAttrString(ctypes_module, "addressof");
  Py_DECREF(ctypes_module);
  if (g_addressof == NULL) goto fail;
  dir_cell_slots[0] = SLOT(Py_tp_new, dir_cell_new);
  dir_cell_slots[1] = SLOT(Py_tp_dealloc, dir_cell_dealloc);
  dir_cell_slots[2] = (PyType_Slot){Py_tp_methods, dir_cell_methods};
  dir_cell_slots[3] = (PyType_Slot){Py_tp_getset, dir_cell_getset};
  dir_cell_slots[4] = (PyType_Slot){0, NULL};
  cycle_slots[0] = SLOT(Py_tp_new, cycle_new);
  cycle_slots[1] = SLOT(Py_tp_dealloc, cycle_dealloc);
  cycle_slots[2] = SLOT(Py_tp_call, cycle_call);
  cycle_slots[3] = (PyType_Slot){0, NULL};
  dir_cell_type = (PyTypeObject *)PyType_FromSpec(&dir_cell_spec);
  cycle_type = (PyTypeObject *)PyType_FromSpec(&cycle_spec);
  /* PyModule_AddObject steals the reference only on success; the module
   * keeps the types (and so these pointers) alive for the process. */
  if (dir_cell_type == NULL || cycle_type == NULL) goto fail;
  Py_INCREF(dir_cell_type);
  if (PyModule_AddObject(m, "DirCell", (PyObject *)dir_cell_type) != 0) {
    Py_DECREF(dir_cell_type);
    goto fail;
  }
  Py_INCREF(cycle_type);
  if (PyModule_AddObject(m, "Cycle", (PyObject *)cycle_type) != 0) {
    Py_DECREF(cycle_type);
    goto fail;
  }
  return m;
fail:
  Py_DECREF(m);
  return NULL;
}
