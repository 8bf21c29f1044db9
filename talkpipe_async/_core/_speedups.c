/*
 * talkpipe_async._core._speedups: the per-item step of batch-fed sources, in C.
 *
 * Sources that read I/O in large chunks produce lists of items.  Handing the
 * items out through an async generator (`for item in batch: yield item`)
 * costs a generator resume and suspend per item, about as much as iterating
 * a file with plain open().  BatchItems hands them out with a C-level
 * __anext__ whose awaitable (Ready) completes at once through am_send,
 * without an exception object or an event-loop round trip; only when a batch
 * is used up does it call the Python coroutine self._fetch(), which awaits
 * the next batch and installs it with self._load(batch, start).
 *
 * The pure-Python twin lives in _items.py and is used when this module is
 * not built (or TALKPIPE_ASYNC_NO_EXTENSIONS is set); both behave the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

/* ---------------------------------------------------------------- Ready */

typedef struct {
    PyObject_HEAD
    PyObject *value; /* NULL once delivered */
} Ready;

static PyTypeObject ReadyType;

static void
ready_dealloc(Ready *self)
{
    Py_CLEAR(self->value);
    PyObject_Free(self);
}

static PyObject *
ready_await(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

/* Take the value out (a new reference; None if already delivered). */
static PyObject *
ready_take(Ready *self)
{
    PyObject *v = self->value;
    self->value = NULL;
    if (v == NULL) {
        v = Py_None;
        Py_INCREF(v);
    }
    return v;
}

static PySendResult
ready_send(Ready *self, PyObject *Py_UNUSED(arg), PyObject **result)
{
    *result = ready_take(self);
    return PYGEN_RETURN;
}

/* The iterator protocol (for callers that do not use am_send): StopIteration(value). */
static PyObject *
ready_next(Ready *self)
{
    PyObject *v = ready_take(self);
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, v);
    Py_DECREF(v);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *
ready_send_method(Ready *self, PyObject *Py_UNUSED(arg))
{
    return ready_next(self);
}

static PyObject *
ready_throw(Ready *self, PyObject *args)
{
    PyObject *typ, *val = NULL, *tb = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb)) {
        return NULL;
    }
    Py_CLEAR(self->value);
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "throw() expects an exception");
    }
    return NULL;
}

static PyObject *
ready_close(Ready *self, PyObject *Py_UNUSED(unused))
{
    Py_CLEAR(self->value);
    Py_RETURN_NONE;
}

static PyMethodDef ready_methods[] = {
    {"send", (PyCFunction)ready_send_method, METH_O, "Finish at once with the value (StopIteration)."},
    {"throw", (PyCFunction)ready_throw, METH_VARARGS, "Raise the given exception."},
    {"close", (PyCFunction)ready_close, METH_NOARGS, "Drop the value."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods ready_as_async = {
    .am_await = ready_await,
    .am_send = (sendfunc)ready_send,
};

static PyTypeObject ReadyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.Ready",
    .tp_doc = "An awaitable that is already done: awaiting it returns its value.",
    .tp_basicsize = sizeof(Ready),
    .tp_dealloc = (destructor)ready_dealloc,
    .tp_as_async = &ready_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)ready_next,
    .tp_methods = ready_methods,
};

/* ----------------------------------------------------------- BatchItems */

typedef struct {
    PyObject_HEAD
    PyObject *batch;  /* the list being handed out, or NULL */
    Py_ssize_t index; /* next item of batch */
    Ready *ready;     /* reused when nobody else holds it */
    PyObject *dict;
    PyObject *weakrefs;
} BatchItems;

static int
items_traverse(BatchItems *self, visitproc visit, void *arg)
{
    Py_VISIT(self->batch);
    Py_VISIT(self->dict);
    return 0;
}

static int
items_clear(BatchItems *self)
{
    Py_CLEAR(self->batch);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->dict);
    return 0;
}

static void
items_dealloc(BatchItems *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    items_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
items_ready(BatchItems *self, PyObject *item)
{
    Ready *r = self->ready;
    if (r != NULL && Py_REFCNT(r) == 1) {
        Py_XSETREF(r->value, item);
        Py_INCREF(r);
        return (PyObject *)r;
    }
    r = PyObject_New(Ready, &ReadyType);
    if (r == NULL) {
        Py_DECREF(item);
        return NULL;
    }
    r->value = item;
    Py_INCREF(r);
    Py_XSETREF(self->ready, r);
    return (PyObject *)r;
}

static PyObject *
items_anext(BatchItems *self)
{
    PyObject *batch = self->batch;
    if (batch != NULL) {
        Py_ssize_t n = PyList_GET_SIZE(batch);
        if (self->index < n) {
            PyObject *item = PyList_GET_ITEM(batch, self->index);
            Py_INCREF(item);
            self->index++;
            if (self->index >= n) {
                Py_CLEAR(self->batch);
            }
            return items_ready(self, item);
        }
        Py_CLEAR(self->batch);
    }
    return PyObject_CallMethod((PyObject *)self, "_fetch", NULL);
}

static PyObject *
items_aiter(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

static PyObject *
items_load(BatchItems *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_load(batch: list, start: int)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "_load: start must not be negative");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(self->batch, args[0]);
    self->index = start;
    Py_RETURN_NONE;
}

static PyObject *
items_pending(BatchItems *self, PyObject *Py_UNUSED(unused))
{
    Py_ssize_t left = 0;
    if (self->batch != NULL) {
        left = PyList_GET_SIZE(self->batch) - self->index;
    }
    return PyLong_FromSsize_t(left < 0 ? 0 : left);
}

static PyMethodDef items_methods[] = {
    {"_load", (PyCFunction)(void (*)(void))items_load, METH_FASTCALL,
     "_load(batch, start): hand out batch[start:] next."},
    {"pending", (PyCFunction)items_pending, METH_NOARGS, "Items of the current batch not handed out yet."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods items_as_async = {
    .am_aiter = items_aiter,
    .am_anext = (unaryfunc)items_anext,
};

static PyTypeObject BatchItemsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.BatchItems",
    .tp_doc = "Async iterator over the items of successive lists; subclasses define _fetch().",
    .tp_basicsize = sizeof(BatchItems),
    .tp_dealloc = (destructor)items_dealloc,
    .tp_as_async = &items_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)items_traverse,
    .tp_clear = (inquiry)items_clear,
    .tp_methods = items_methods,
    .tp_dictoffset = offsetof(BatchItems, dict),
    .tp_weaklistoffset = offsetof(BatchItems, weakrefs),
    .tp_new = PyType_GenericNew,
};

/* --------------------------------------------------------------- module */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "talkpipe_async._core._speedups",
    .m_doc = "C speed-ups of talkpipe_async's core (optional; _items.py has the Python twin).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&ReadyType) < 0 || PyType_Ready(&BatchItemsType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&BatchItemsType);
    if (PyModule_AddObject(m, "BatchItems", (PyObject *)&BatchItemsType) < 0) {
        Py_DECREF(&BatchItemsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
