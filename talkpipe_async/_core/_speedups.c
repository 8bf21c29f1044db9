/*
 * talkpipe_async._core._speedups: the per-item step of batch-fed sources and the
 * per-stage counters of the statistics, in C.
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
 * The pure-Python twin lives in _batch_items.py and is used when this module is
 * not built (or TALKPIPE_ASYNC_NO_EXTENSIONS is set); both behave the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

/* -------------------------------------------------------------- helpers */

/* __await__ / __aiter__ of an object that is its own iterator. */
static PyObject *
return_self(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

#if PY_VERSION_HEX >= 0x030C0000 && !defined(Py_GIL_DISABLED)
/*
 * From Python 3.12 the interpreter's SEND resumes a C awaitable through tp_iternext, so every item a C step
 * hands to a Python frame finishes with StopIteration(value).  Creating that exception (a call of the class,
 * its argument tuple, the implicit chaining of _PyErr_SetObject) costs about as much as a generator stage;
 * the interpreter only reads its .value and lets it go at once.  So one instance is kept and raised again
 * while nothing else holds it, its .value set to the item (its args stay empty), its traceback and context
 * reset.  The value it keeps after the raise is dropped when the step's owner goes (stop_cache_forget).
 */
static PyObject *stop_cache;

static PyObject *
raise_stop(PyObject *value)
{
    PyObject *exc = stop_cache;
    if (exc == NULL || Py_REFCNT(exc) != 1) {
        PyObject *fresh = PyObject_CallNoArgs(PyExc_StopIteration);
        if (fresh == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        Py_XSETREF(stop_cache, fresh);
        exc = fresh;
    }
    else {
        PyException_SetTraceback(exc, Py_None);
        PyException_SetContext(exc, NULL);
    }
    Py_XSETREF(((PyStopIterationObject *)exc)->value, value);
    PyErr_SetRaisedException(Py_NewRef(exc));
    return NULL;
}

/* Drop the last value the kept StopIteration holds (an item must not outlive its stream there). */
static void
stop_cache_forget(void)
{
    if (stop_cache != NULL && Py_REFCNT(stop_cache) == 1) {
        Py_CLEAR(((PyStopIterationObject *)stop_cache)->value);
    }
}
#else
/* Finish an iterator step with *value* (stolen): raise StopIteration(value), a tuple kept as one value. */
static PyObject *
raise_stop(PyObject *value)
{
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static void
stop_cache_forget(void)
{
}
#endif

/* Raise what throw(type[, value[, traceback]]) or throw(instance) was given. */
static PyObject *
raise_thrown(PyObject *args)
{
    PyObject *typ, *val = NULL, *tb = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb)) {
        return NULL;
    }
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

/* The int 1 (a borrowed reference, immortal enough: kept for the module's life). */
static PyObject *one_int;
/* The type of an async generator's __anext__ awaitable (found at import). */
static PyTypeObject *asend_type;

static PyObject *
_PyLong_GetOne_compat(void)
{
    return one_int;
}

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
    return raise_stop(ready_take(self));
}

static PyObject *
ready_send_method(Ready *self, PyObject *Py_UNUSED(arg))
{
    return ready_next(self);
}

static PyObject *
ready_throw(Ready *self, PyObject *args)
{
    Py_CLEAR(self->value);
    return raise_thrown(args);
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
    .am_await = return_self,
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
    stop_cache_forget();
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
    stop_cache_forget(); /* the last item went to its consumer long ago */
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
    .am_aiter = return_self,
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

/* ------------------------------------------------------------- Counter */

/*
 * Counter: counts the __anext__ calls made on an async iterator and returns
 * the iterator's own awaitable (so cancellation, throw() and close() reach
 * it untouched).  The Python subclass in _stats.py turns calls into items
 * (a call still in flight, or the one that ended the stream, is not an item).
 */
typedef struct {
    PyObject_HEAD
    PyObject *upstream;
    unaryfunc anext;
    Py_ssize_t calls;
    PyObject *dict;
} Counter;

static int
counter_init(Counter *self, PyObject *args, PyObject *kwds)
{
    PyObject *upstream;
    if (!PyArg_ParseTuple(args, "O:Counter", &upstream)) {
        return -1;
    }
    PyAsyncMethods *am = Py_TYPE(upstream)->tp_as_async;
    if (am == NULL || am->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "Counter needs an async iterator, not %.100s", Py_TYPE(upstream)->tp_name);
        return -1;
    }
    Py_INCREF(upstream);
    Py_XSETREF(self->upstream, upstream);
    self->anext = am->am_anext;
    self->calls = 0;
    return 0;
}

static int
counter_traverse(Counter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->upstream);
    Py_VISIT(self->dict);
    return 0;
}

static int
counter_clear(Counter *self)
{
    Py_CLEAR(self->upstream);
    Py_CLEAR(self->dict);
    return 0;
}

static void
counter_dealloc(Counter *self)
{
    PyObject_GC_UnTrack(self);
    counter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
counter_anext(Counter *self)
{
    if (self->upstream == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Counter has no upstream");
        return NULL;
    }
    self->calls++;
    return self->anext(self->upstream);
}

static PyObject *
counter_get_calls(Counter *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->calls);
}

static PyObject *
counter_get_upstream(Counter *self, void *Py_UNUSED(closure))
{
    PyObject *up = self->upstream ? self->upstream : Py_None;
    Py_INCREF(up);
    return up;
}

static PyGetSetDef counter_getset[] = {
    {"calls", (getter)counter_get_calls, NULL, "__anext__ calls so far.", NULL},
    {"upstream", (getter)counter_get_upstream, NULL, "The counted async iterator.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods counter_as_async = {
    .am_aiter = return_self,
    .am_anext = (unaryfunc)counter_anext,
};

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.Counter",
    .tp_doc = "Counter(upstream): an async iterator that counts the __anext__ calls made on upstream.",
    .tp_basicsize = sizeof(Counter),
    .tp_dealloc = (destructor)counter_dealloc,
    .tp_as_async = &counter_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)counter_traverse,
    .tp_clear = (inquiry)counter_clear,
    .tp_getset = counter_getset,
    .tp_dictoffset = offsetof(Counter, dict),
    .tp_init = (initproc)counter_init,
    .tp_new = PyType_GenericNew,
};

/* ----------------------------------------------------------- CountIter */

/* CountIter(iterator): the same items, counted (the sync side of the statistics). */
typedef struct {
    PyObject_HEAD
    PyObject *upstream;
    Py_ssize_t count;
} CountIter;

static PyObject *
countiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *iterable;
    if (!PyArg_ParseTuple(args, "O:CountIter", &iterable)) {
        return NULL;
    }
    PyObject *it = PyObject_GetIter(iterable);
    if (it == NULL) {
        return NULL;
    }
    CountIter *self = (CountIter *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(it);
        return NULL;
    }
    self->upstream = it;
    self->count = 0;
    return (PyObject *)self;
}

static int
countiter_traverse(CountIter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->upstream);
    return 0;
}

static void
countiter_dealloc(CountIter *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->upstream);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
countiter_next(CountIter *self)
{
    PyObject *item = Py_TYPE(self->upstream)->tp_iternext(self->upstream);
    if (item != NULL) {
        self->count++;
    }
    return item;
}

static PyObject *
countiter_get_count(CountIter *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->count);
}

static PyGetSetDef countiter_getset[] = {
    {"count", (getter)countiter_get_count, NULL, "Items handed on so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CountIterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.CountIter",
    .tp_doc = "CountIter(iterable): its items, counted in .count.",
    .tp_basicsize = sizeof(CountIter),
    .tp_dealloc = (destructor)countiter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)countiter_traverse,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)countiter_next,
    .tp_getset = countiter_getset,
    .tp_new = countiter_new,
};

/* ----------------------------------------------------------- Intercept */

/* getattr that returns 0 and *out = NULL when the attribute is missing (PyObject_GetOptionalAttrString is 3.13+). */
static int
PyObject_GetOptionalAttrStringCompat(PyObject *obj, const char *name, PyObject **out)
{
    *out = PyObject_GetAttrString(obj, name);
    if (*out != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/*
 * The C twin of _metadata_path.Intercept: an async iterator over upstream whose
 * awaitables (InterceptStep) drive upstream's awaitable with PyIter_Send.  A
 * value the chain yields to the event loop goes up unchanged, except a
 * _Bypass: then the step finishes at once with the bypassed item and keeps
 * the suspended chain (pending) to resume at the next __anext__.
 */
typedef struct {
    PyObject_HEAD
    PyObject *upstream;
    unaryfunc anext;
    PyObject *pending;     /* awaitable iterator left suspended by a bypass */
    PyObject *bypass_type; /* the _Bypass class */
    PyObject *step;        /* reused when nobody else holds it */
    PyObject *dict;
} Intercept;

typedef struct {
    PyObject_HEAD
    Intercept *owner;
    PyObject *inner; /* NULL once finished */
} InterceptStep;

static PyTypeObject InterceptStepType;

/* The iterator to drive for the awaitable aw (a new reference). */
static PyObject *
awaitable_iter(PyObject *aw)
{
    if (PyCoro_CheckExact(aw) || PyGen_CheckExact(aw)) {
        Py_INCREF(aw);
        return aw;
    }
    PyAsyncMethods *am = Py_TYPE(aw)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "__anext__ returned a non-awaitable %.100s", Py_TYPE(aw)->tp_name);
        return NULL;
    }
    PyObject *it = am->am_await(aw);
    if (it != NULL && !PyIter_Check(it)) {
        PyErr_Format(PyExc_TypeError, "__await__ returned a non-iterator %.100s", Py_TYPE(it)->tp_name);
        Py_CLEAR(it);
    }
    return it;
}

/* awaitable_iter(aw), stealing aw: an async generator's awaitable is its own iterator, taken as is. */
static PyObject *
awaitable_iter_steal(PyObject *aw)
{
    if (asend_type == NULL && strcmp(Py_TYPE(aw)->tp_name, "async_generator_asend") == 0) {
        asend_type = Py_TYPE(aw); /* a static type of the interpreter: never freed */
    }
    if (Py_TYPE(aw) == asend_type) {
        return aw;
    }
    PyObject *it = awaitable_iter(aw);
    Py_DECREF(aw);
    return it;
}

/* The value of a pending StopIteration (a new reference), or NULL with the error kept. */
static PyObject *
take_stop_value(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        return NULL;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *result = value ? PyObject_GetAttrString(value, "value") : NULL;
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (result == NULL && !PyErr_Occurred()) {
        result = Py_None;
        Py_INCREF(result);
    }
    return result;
}

/* Turn the inner iterator's outcome (r, res) into the step's outcome. */
static PySendResult
step_outcome(InterceptStep *s, PySendResult r, PyObject *res, PyObject **result)
{
    if (r == PYGEN_NEXT) {
        if ((PyObject *)Py_TYPE(res) == s->owner->bypass_type) {
            PyObject *item = PyObject_GetAttrString(res, "item");
            Py_DECREF(res);
            if (item == NULL) {
                Py_CLEAR(s->inner);
                *result = NULL;
                return PYGEN_ERROR;
            }
            Py_XSETREF(s->owner->pending, s->inner); /* resumed by the next __anext__ */
            s->inner = NULL;
            *result = item;
            return PYGEN_RETURN;
        }
        *result = res;
        return PYGEN_NEXT;
    }
    Py_CLEAR(s->inner);
    *result = res;
    return r;
}

static PySendResult
step_send(InterceptStep *s, PyObject *arg, PyObject **result)
{
    if (s->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited intercept step");
        *result = NULL;
        return PYGEN_ERROR;
    }
    PyObject *res;
    PySendResult r = PyIter_Send(s->inner, arg, &res);
    return step_outcome(s, r, res, result);
}

/* The Python iterator protocol over an outcome: yield, StopIteration(value), or the error. */
static PyObject *
as_python(PySendResult r, PyObject *res)
{
    if (r == PYGEN_NEXT) {
        return res;
    }
    if (r == PYGEN_RETURN) {
        return raise_stop(res);
    }
    return NULL;
}

static PyObject *
step_next(InterceptStep *s)
{
    PyObject *res;
    PySendResult r = step_send(s, Py_None, &res);
    return as_python(r, res);
}

static PyObject *
step_send_method(InterceptStep *s, PyObject *arg)
{
    PyObject *res;
    PySendResult r = step_send(s, arg, &res);
    return as_python(r, res);
}

static PyObject *
step_throw(InterceptStep *s, PyObject *args)
{
    PyObject *meth = NULL;
    if (s->inner != NULL && PyObject_GetOptionalAttrStringCompat(s->inner, "throw", &meth) < 0) {
        return NULL;
    }
    if (meth == NULL) { /* nothing to forward to: raise it here */
        Py_CLEAR(s->inner);
        return raise_thrown(args);
    }
    PyObject *res = PyObject_CallObject(meth, args);
    Py_DECREF(meth);
    PySendResult r = PYGEN_NEXT;
    if (res == NULL) {
        res = take_stop_value();
        r = res == NULL ? PYGEN_ERROR : PYGEN_RETURN;
    }
    PyObject *out;
    r = step_outcome(s, r, res, &out);
    return as_python(r, out);
}

static PyObject *
step_close(InterceptStep *s, PyObject *Py_UNUSED(unused))
{
    PyObject *inner = s->inner;
    s->inner = NULL;
    if (inner == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *res = PyObject_CallMethod(inner, "close", NULL);
    Py_DECREF(inner);
    if (res == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return res;
}

static int
step_traverse(InterceptStep *s, visitproc visit, void *arg)
{
    Py_VISIT(s->owner);
    Py_VISIT(s->inner);
    return 0;
}

static int
step_clear(InterceptStep *s)
{
    Py_CLEAR(s->inner);
    Py_CLEAR(s->owner);
    return 0;
}

static void
step_dealloc(InterceptStep *s)
{
    PyObject_GC_UnTrack(s);
    step_clear(s);
    PyObject_GC_Del(s);
}

static PyMethodDef step_methods[] = {
    {"send", (PyCFunction)step_send_method, METH_O, "Resume the chain with a value."},
    {"throw", (PyCFunction)step_throw, METH_VARARGS, "Throw an exception into the chain."},
    {"close", (PyCFunction)step_close, METH_NOARGS, "Close the chain's awaitable."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods step_as_async = {
    .am_await = return_self,
    .am_send = (sendfunc)step_send,
};

static PyTypeObject InterceptStepType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.InterceptStep",
    .tp_doc = "The awaitable of one Intercept.__anext__.",
    .tp_basicsize = sizeof(InterceptStep),
    .tp_dealloc = (destructor)step_dealloc,
    .tp_as_async = &step_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)step_traverse,
    .tp_clear = (inquiry)step_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)step_next,
    .tp_methods = step_methods,
};

static int
intercept_init(Intercept *self, PyObject *args, PyObject *kwds)
{
    PyObject *upstream, *bypass_type;
    if (!PyArg_ParseTuple(args, "OO:Intercept", &upstream, &bypass_type)) {
        return -1;
    }
    PyAsyncMethods *am = Py_TYPE(upstream)->tp_as_async;
    if (am == NULL || am->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "Intercept needs an async iterator, not %.100s", Py_TYPE(upstream)->tp_name);
        return -1;
    }
    if (!PyType_Check(bypass_type)) {
        PyErr_SetString(PyExc_TypeError, "Intercept: bypass_type must be a class");
        return -1;
    }
    Py_INCREF(upstream);
    Py_XSETREF(self->upstream, upstream);
    self->anext = am->am_anext;
    Py_INCREF(bypass_type);
    Py_XSETREF(self->bypass_type, bypass_type);
    return 0;
}

static int
intercept_traverse(Intercept *self, visitproc visit, void *arg)
{
    Py_VISIT(self->upstream);
    Py_VISIT(self->pending);
    Py_VISIT(self->bypass_type);
    Py_VISIT(self->step);
    Py_VISIT(self->dict);
    return 0;
}

static int
intercept_clear(Intercept *self)
{
    Py_CLEAR(self->step);
    Py_CLEAR(self->upstream);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->bypass_type);
    Py_CLEAR(self->dict);
    return 0;
}

static void
intercept_dealloc(Intercept *self)
{
    stop_cache_forget();
    PyObject_GC_UnTrack(self);
    intercept_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
intercept_anext(Intercept *self)
{
    stop_cache_forget(); /* the last item went to its consumer long ago */
    if (self->upstream == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Intercept has no upstream");
        return NULL;
    }
    PyObject *inner = self->pending;
    self->pending = NULL;
    if (inner == NULL) {
        PyObject *aw = self->anext(self->upstream);
        if (aw == NULL) {
            return NULL;
        }
        inner = awaitable_iter_steal(aw);
        if (inner == NULL) {
            return NULL;
        }
    }
    InterceptStep *s = (InterceptStep *)self->step;
    if (s != NULL && Py_REFCNT(s) == 1 && s->inner == NULL && s->owner == self) {
        s->inner = inner; /* nobody else holds the last step: reuse it */
        Py_INCREF(s);
        return (PyObject *)s;
    }
    s = PyObject_GC_New(InterceptStep, &InterceptStepType);
    if (s == NULL) {
        Py_DECREF(inner);
        return NULL;
    }
    s->inner = inner;
    Py_INCREF(self);
    s->owner = self;
    PyObject_GC_Track(s);
    Py_INCREF(s); /* kept for reuse (a cycle with its owner, which the GC sees through tp_traverse) */
    Py_XSETREF(self->step, (PyObject *)s);
    return (PyObject *)s;
}

static PyObject *
intercept_take_pending(Intercept *self, PyObject *Py_UNUSED(unused))
{
    PyObject *pending = self->pending;
    self->pending = NULL;
    if (pending == NULL) {
        Py_RETURN_NONE;
    }
    return pending;
}

static PyMethodDef intercept_methods[] = {
    {"_take_pending", (PyCFunction)intercept_take_pending, METH_NOARGS,
     "The chain left suspended by a bypass (or None); the intercept forgets it."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods intercept_as_async = {
    .am_aiter = return_self,
    .am_anext = (unaryfunc)intercept_anext,
};

static PyTypeObject InterceptType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.Intercept",
    .tp_doc = "Intercept(upstream, bypass_type): turns bypassed metadata back into stream items.",
    .tp_basicsize = sizeof(Intercept),
    .tp_dealloc = (destructor)intercept_dealloc,
    .tp_as_async = &intercept_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)intercept_traverse,
    .tp_clear = (inquiry)intercept_clear,
    .tp_methods = intercept_methods,
    .tp_dictoffset = offsetof(Intercept, dict),
    .tp_init = (initproc)intercept_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------- Strip */

/*
 * The C twin of _metadata_path.strip_async: an async iterator over upstream that
 * hands on the data items and keeps Metadata from the segment after it.  Its
 * awaitables (StripStep) drive upstream's awaitable with PyIter_Send, so a
 * data item costs no generator frame and no StopIteration of its own.  A
 * Metadata item is either bypassed (the step yields bypass_type(item) up the
 * suspended chain, to the Intercept above, and fetches the next item when
 * resumed) or dropped and counted (counter.dropped += 1).
 */
typedef struct {
    PyObject_HEAD
    PyObject *upstream;
    unaryfunc anext;
    PyObject *meta_type;   /* the Metadata class */
    PyObject *bypass_type; /* the _Bypass class, or None: drop and count */
    PyObject *counter;     /* the run's MetaCounter */
    PyObject *step;        /* reused when nobody else holds it */
    PyObject *data_type;   /* the type of the last data item: the same type again is data, no subclass check */
    PyObject *dict;
} Strip;

typedef struct {
    PyObject_HEAD
    Strip *owner;
    PyObject *inner; /* upstream's awaitable in flight, or NULL */
    int started;     /* an item was asked for (0: fetch one at the first send) */
} StripStep;

static PyTypeObject StripStepType;

/* Ask upstream for its next item: s->inner is its awaitable. */
static int
strip_fetch(StripStep *s)
{
    PyObject *aw = s->owner->anext(s->owner->upstream);
    if (aw == NULL) {
        return -1;
    }
    s->inner = awaitable_iter_steal(aw);
    return s->inner == NULL ? -1 : 0;
}

/* counter.dropped += 1 */
static int
strip_count_drop(Strip *st)
{
    PyObject *n = PyObject_GetAttrString(st->counter, "dropped");
    if (n == NULL) {
        return -1;
    }
    PyObject *m = PyNumber_Add(n, _PyLong_GetOne_compat());
    Py_DECREF(n);
    if (m == NULL) {
        return -1;
    }
    int r = PyObject_SetAttrString(st->counter, "dropped", m);
    Py_DECREF(m);
    return r;
}

/* Drive the chain from (r, res), the outcome of the inner awaitable; loop past dropped metadata. */
static PySendResult
strip_run(StripStep *s, PySendResult r, PyObject *res, PyObject **result)
{
    Strip *st = s->owner;
    for (;;) {
        if (r == PYGEN_NEXT) { /* upstream waits on the event loop: pass its signal up */
            *result = res;
            return PYGEN_NEXT;
        }
        Py_CLEAR(s->inner);
        if (r == PYGEN_ERROR || (PyObject *)Py_TYPE(res) == st->data_type) {
            *result = res;
            return r;
        }
        if (!PyObject_TypeCheck(res, (PyTypeObject *)st->meta_type)) {
            Py_INCREF(Py_TYPE(res));
            Py_XSETREF(st->data_type, (PyObject *)Py_TYPE(res));
            *result = res;
            return r;
        }
        if (st->bypass_type != Py_None) { /* up the suspended chain to the Intercept */
            PyObject *signal = PyObject_CallOneArg(st->bypass_type, res);
            Py_DECREF(res);
            if (signal == NULL) {
                *result = NULL;
                return PYGEN_ERROR;
            }
            s->started = 0; /* resumed by a send: then fetch the next item */
            *result = signal;
            return PYGEN_NEXT;
        }
        Py_DECREF(res);
        if (strip_count_drop(st) < 0 || strip_fetch(s) < 0) {
            *result = NULL;
            return PYGEN_ERROR;
        }
        r = PyIter_Send(s->inner, Py_None, &res);
    }
}

static PySendResult
strip_step_send(StripStep *s, PyObject *arg, PyObject **result)
{
    if (!s->started) {
        s->started = 1;
        if (strip_fetch(s) < 0) {
            *result = NULL;
            return PYGEN_ERROR;
        }
        arg = Py_None;
    }
    else if (s->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited strip step");
        *result = NULL;
        return PYGEN_ERROR;
    }
    PyObject *res;
    PySendResult r = PyIter_Send(s->inner, arg, &res);
    return strip_run(s, r, res, result);
}

static PyObject *
strip_step_next(StripStep *s)
{
    PyObject *res;
    PySendResult r = strip_step_send(s, Py_None, &res);
    return as_python(r, res);
}

static PyObject *
strip_step_send_method(StripStep *s, PyObject *arg)
{
    PyObject *res;
    PySendResult r = strip_step_send(s, arg, &res);
    return as_python(r, res);
}

static PyObject *
strip_step_throw(StripStep *s, PyObject *args)
{
    PyObject *meth = NULL;
    if (s->inner != NULL && PyObject_GetOptionalAttrStringCompat(s->inner, "throw", &meth) < 0) {
        return NULL;
    }
    if (meth == NULL) { /* suspended at a bypass, or not started: raise it here */
        Py_CLEAR(s->inner);
        s->started = 1;
        return raise_thrown(args);
    }
    PyObject *res = PyObject_CallObject(meth, args);
    Py_DECREF(meth);
    PySendResult r = PYGEN_NEXT;
    if (res == NULL) {
        res = take_stop_value();
        r = res == NULL ? PYGEN_ERROR : PYGEN_RETURN;
    }
    PyObject *out;
    r = strip_run(s, r, res, &out);
    return as_python(r, out);
}

static PyObject *
strip_step_close(StripStep *s, PyObject *Py_UNUSED(unused))
{
    PyObject *inner = s->inner;
    s->inner = NULL;
    s->started = 1;
    if (inner == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *res = PyObject_CallMethod(inner, "close", NULL);
    Py_DECREF(inner);
    if (res == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return res;
}

static int
strip_step_traverse(StripStep *s, visitproc visit, void *arg)
{
    Py_VISIT(s->owner);
    Py_VISIT(s->inner);
    return 0;
}

static int
strip_step_clear(StripStep *s)
{
    Py_CLEAR(s->inner);
    Py_CLEAR(s->owner);
    return 0;
}

static void
strip_step_dealloc(StripStep *s)
{
    PyObject_GC_UnTrack(s);
    strip_step_clear(s);
    PyObject_GC_Del(s);
}

static PyMethodDef strip_step_methods[] = {
    {"send", (PyCFunction)strip_step_send_method, METH_O, "Resume the chain with a value."},
    {"throw", (PyCFunction)strip_step_throw, METH_VARARGS, "Throw an exception into the chain."},
    {"close", (PyCFunction)strip_step_close, METH_NOARGS, "Close upstream's awaitable."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods strip_step_as_async = {
    .am_await = return_self,
    .am_send = (sendfunc)strip_step_send,
};

static PyTypeObject StripStepType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.StripStep",
    .tp_doc = "The awaitable of one Strip.__anext__.",
    .tp_basicsize = sizeof(StripStep),
    .tp_dealloc = (destructor)strip_step_dealloc,
    .tp_as_async = &strip_step_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)strip_step_traverse,
    .tp_clear = (inquiry)strip_step_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)strip_step_next,
    .tp_methods = strip_step_methods,
};

static int
strip_init(Strip *self, PyObject *args, PyObject *kwds)
{
    PyObject *upstream, *meta_type, *bypass_type, *counter;
    if (!PyArg_ParseTuple(args, "OOOO:Strip", &upstream, &meta_type, &bypass_type, &counter)) {
        return -1;
    }
    PyAsyncMethods *am = Py_TYPE(upstream)->tp_as_async;
    if (am == NULL || am->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "Strip needs an async iterator, not %.100s", Py_TYPE(upstream)->tp_name);
        return -1;
    }
    if (!PyType_Check(meta_type) || (bypass_type != Py_None && !PyType_Check(bypass_type))) {
        PyErr_SetString(PyExc_TypeError, "Strip: meta_type and bypass_type must be classes (bypass_type may be None)");
        return -1;
    }
    Py_INCREF(upstream);
    Py_XSETREF(self->upstream, upstream);
    self->anext = am->am_anext;
    Py_INCREF(meta_type);
    Py_XSETREF(self->meta_type, meta_type);
    Py_INCREF(bypass_type);
    Py_XSETREF(self->bypass_type, bypass_type);
    Py_INCREF(counter);
    Py_XSETREF(self->counter, counter);
    return 0;
}

static int
strip_traverse(Strip *self, visitproc visit, void *arg)
{
    Py_VISIT(self->upstream);
    Py_VISIT(self->meta_type);
    Py_VISIT(self->bypass_type);
    Py_VISIT(self->counter);
    Py_VISIT(self->step);
    Py_VISIT(self->data_type);
    Py_VISIT(self->dict);
    return 0;
}

static int
strip_clear(Strip *self)
{
    Py_CLEAR(self->data_type);
    Py_CLEAR(self->upstream);
    Py_CLEAR(self->meta_type);
    Py_CLEAR(self->bypass_type);
    Py_CLEAR(self->counter);
    Py_CLEAR(self->step);
    Py_CLEAR(self->dict);
    return 0;
}

static void
strip_dealloc(Strip *self)
{
    stop_cache_forget();
    PyObject_GC_UnTrack(self);
    strip_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
strip_anext(Strip *self)
{
    stop_cache_forget(); /* the last item went to its consumer long ago */
    if (self->upstream == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Strip has no upstream");
        return NULL;
    }
    StripStep *s = (StripStep *)self->step;
    if (s != NULL && Py_REFCNT(s) == 1 && s->inner == NULL && s->owner == self) {
        s->started = 0; /* nobody else holds the last step: reuse it */
        Py_INCREF(s);
        return (PyObject *)s;
    }
    s = PyObject_GC_New(StripStep, &StripStepType);
    if (s == NULL) {
        return NULL;
    }
    s->inner = NULL;
    s->started = 0;
    Py_INCREF(self);
    s->owner = self;
    PyObject_GC_Track(s);
    Py_INCREF(s); /* kept for reuse (a cycle with its owner, which the GC sees through tp_traverse) */
    Py_XSETREF(self->step, (PyObject *)s);
    return (PyObject *)s;
}

static PyAsyncMethods strip_as_async = {
    .am_aiter = return_self,
    .am_anext = (unaryfunc)strip_anext,
};

static PyTypeObject StripType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.Strip",
    .tp_doc = "Strip(upstream, meta_type, bypass_type, counter): the data items of upstream; metadata bypassed or dropped.",
    .tp_basicsize = sizeof(Strip),
    .tp_dealloc = (destructor)strip_dealloc,
    .tp_as_async = &strip_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)strip_traverse,
    .tp_clear = (inquiry)strip_clear,
    .tp_dictoffset = offsetof(Strip, dict),
    .tp_init = (initproc)strip_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------ StripIter */

/* StripIter(iterable, meta_type, pending, counter): the C twin of _metadata_path.strip_sync. */
typedef struct {
    PyObject_HEAD
    PyObject *upstream;
    PyObject *meta_type;
    PyObject *pending; /* a list that takes the metadata, or None: drop and count */
    PyObject *counter;
    PyObject *data_type; /* the type of the last data item (see Strip) */
} StripIter;

static PyObject *
stripiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *iterable, *meta_type, *pending, *counter;
    if (!PyArg_ParseTuple(args, "OOOO:StripIter", &iterable, &meta_type, &pending, &counter)) {
        return NULL;
    }
    if (!PyType_Check(meta_type) || (pending != Py_None && !PyList_Check(pending))) {
        PyErr_SetString(PyExc_TypeError, "StripIter: meta_type must be a class and pending a list or None");
        return NULL;
    }
    PyObject *it = PyObject_GetIter(iterable);
    if (it == NULL) {
        return NULL;
    }
    StripIter *self = (StripIter *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(it);
        return NULL;
    }
    self->upstream = it;
    Py_INCREF(meta_type);
    self->meta_type = meta_type;
    Py_INCREF(pending);
    self->pending = pending;
    Py_INCREF(counter);
    self->counter = counter;
    return (PyObject *)self;
}

static int
stripiter_traverse(StripIter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->upstream);
    Py_VISIT(self->meta_type);
    Py_VISIT(self->pending);
    Py_VISIT(self->counter);
    Py_VISIT(self->data_type);
    return 0;
}

static void
stripiter_dealloc(StripIter *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->data_type);
    Py_CLEAR(self->upstream);
    Py_CLEAR(self->meta_type);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->counter);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
stripiter_next(StripIter *self)
{
    iternextfunc next = Py_TYPE(self->upstream)->tp_iternext;
    for (;;) {
        PyObject *item = next(self->upstream);
        if (item == NULL || (PyObject *)Py_TYPE(item) == self->data_type) {
            return item;
        }
        if (!PyObject_TypeCheck(item, (PyTypeObject *)self->meta_type)) {
            Py_INCREF(Py_TYPE(item));
            Py_XSETREF(self->data_type, (PyObject *)Py_TYPE(item));
            return item;
        }
        int r;
        if (self->pending != Py_None) {
            r = PyList_Append(self->pending, item);
        }
        else {
            PyObject *n = PyObject_GetAttrString(self->counter, "dropped");
            PyObject *m = n ? PyNumber_Add(n, _PyLong_GetOne_compat()) : NULL;
            Py_XDECREF(n);
            r = m ? PyObject_SetAttrString(self->counter, "dropped", m) : -1;
            Py_XDECREF(m);
        }
        Py_DECREF(item);
        if (r < 0) {
            return NULL;
        }
    }
}

static PyTypeObject StripIterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.StripIter",
    .tp_doc = "StripIter(iterable, meta_type, pending, counter): the data items; metadata to pending, or dropped.",
    .tp_basicsize = sizeof(StripIter),
    .tp_dealloc = (destructor)stripiter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)stripiter_traverse,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)stripiter_next,
    .tp_new = stripiter_new,
};

/* -------------------------------------------------------------- SyncRun */

/*
 * SyncRun(chain, on_error, on_close): the items of a sync chain (iter_sync), the C twin of the
 * _run_sync generator.  An error raised by the chain is handed to on_error(exc) (which attaches the
 * segment and item) and goes on; at the end, on an error, on close() and when the iterator is
 * dropped, on_close() runs once (it closes every stage, downstream first).
 */
typedef struct {
    PyObject_HEAD
    PyObject *chain;    /* NULL once finished */
    PyObject *on_error;
    PyObject *on_close;
    PyObject *weakrefs;
} SyncRun;

static PyObject *
syncrun_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *chain, *on_error, *on_close;
    if (!PyArg_ParseTuple(args, "OOO:SyncRun", &chain, &on_error, &on_close)) {
        return NULL;
    }
    if (!PyIter_Check(chain)) {
        PyErr_Format(PyExc_TypeError, "SyncRun needs an iterator, not %.100s", Py_TYPE(chain)->tp_name);
        return NULL;
    }
    SyncRun *self = (SyncRun *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(chain);
    self->chain = chain;
    Py_INCREF(on_error);
    self->on_error = on_error;
    Py_INCREF(on_close);
    self->on_close = on_close;
    return (PyObject *)self;
}

/* Run on_close once (the chain is dropped first); 0, or -1 with its error set. */
static int
syncrun_finish(SyncRun *self)
{
    if (self->chain == NULL) {
        return 0;
    }
    Py_CLEAR(self->chain);
    PyObject *r = PyObject_CallNoArgs(self->on_close);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *
syncrun_next(SyncRun *self)
{
    if (self->chain == NULL) {
        return NULL;
    }
    PyObject *item = Py_TYPE(self->chain)->tp_iternext(self->chain);
    if (item != NULL) {
        return item;
    }
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (tb != NULL) {
                PyException_SetTraceback(value, tb);
            }
            PyObject *r = PyObject_CallOneArg(self->on_error, value);
            if (r == NULL) { /* the hook failed: its error goes on, chained to the stage's */
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
            }
            else {
                Py_DECREF(r);
                PyErr_Restore(type, value, tb);
            }
            PyObject *t2, *v2, *tb2;
            PyErr_Fetch(&t2, &v2, &tb2);
            if (syncrun_finish(self) < 0) { /* a stage failed to close: that error, with the first as context */
                PyErr_NormalizeException(&t2, &v2, &tb2);
                PyObject *t3, *v3, *tb3;
                PyErr_Fetch(&t3, &v3, &tb3);
                PyErr_NormalizeException(&t3, &v3, &tb3);
                if (v2 != NULL) {
                    PyException_SetContext(v3, v2); /* steals v2 */
                    v2 = NULL;
                }
                Py_XDECREF(t2);
                Py_XDECREF(tb2);
                PyErr_Restore(t3, v3, tb3);
                return NULL;
            }
            PyErr_Restore(t2, v2, tb2);
            return NULL;
        }
        PyErr_Clear();
    }
    syncrun_finish(self);
    return NULL;
}

static PyObject *
syncrun_close(SyncRun *self, PyObject *Py_UNUSED(unused))
{
    if (syncrun_finish(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static void
syncrun_finalize(SyncRun *self)
{
    if (self->chain == NULL) {
        return;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (syncrun_finish(self) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    PyErr_Restore(type, value, tb);
}

static int
syncrun_traverse(SyncRun *self, visitproc visit, void *arg)
{
    Py_VISIT(self->chain);
    Py_VISIT(self->on_error);
    Py_VISIT(self->on_close);
    return 0;
}

static int
syncrun_clear(SyncRun *self)
{
    Py_CLEAR(self->chain);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->on_close);
    return 0;
}

static void
syncrun_dealloc(SyncRun *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return; /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    syncrun_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef syncrun_methods[] = {
    {"close", (PyCFunction)syncrun_close, METH_NOARGS, "Close every stage now (the loop is left)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SyncRunType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "talkpipe_async._core._speedups.SyncRun",
    .tp_doc = "SyncRun(chain, on_error, on_close): the items of a sync chain; on_close runs once at the end.",
    .tp_basicsize = sizeof(SyncRun),
    .tp_dealloc = (destructor)syncrun_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)syncrun_traverse,
    .tp_clear = (inquiry)syncrun_clear,
    .tp_finalize = (destructor)syncrun_finalize,
    .tp_weaklistoffset = offsetof(SyncRun, weakrefs),
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)syncrun_next,
    .tp_methods = syncrun_methods,
    .tp_new = syncrun_new,
};

/* --------------------------------------------------------------- module */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "talkpipe_async._core._speedups",
    .m_doc = "C speed-ups of talkpipe_async's core (optional; _batch_items.py has the Python twin).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&ReadyType) < 0 || PyType_Ready(&BatchItemsType) < 0 || PyType_Ready(&CounterType) < 0
        || PyType_Ready(&CountIterType) < 0 || PyType_Ready(&InterceptType) < 0
        || PyType_Ready(&InterceptStepType) < 0 || PyType_Ready(&StripType) < 0
        || PyType_Ready(&StripStepType) < 0 || PyType_Ready(&StripIterType) < 0
        || PyType_Ready(&SyncRunType) < 0) {
        return NULL;
    }
    one_int = PyLong_FromLong(1);
    if (one_int == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    struct { const char *name; PyTypeObject *type; } exported[] = {
        {"BatchItems", &BatchItemsType},
        {"Counter", &CounterType},
        {"CountIter", &CountIterType},
        {"Intercept", &InterceptType},
        {"Strip", &StripType},
        {"StripIter", &StripIterType},
        {"SyncRun", &SyncRunType},
    };
    for (size_t i = 0; i < sizeof(exported) / sizeof(exported[0]); i++) {
        Py_INCREF(exported[i].type);
        if (PyModule_AddObject(m, exported[i].name, (PyObject *)exported[i].type) < 0) {
            Py_DECREF(exported[i].type);
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
