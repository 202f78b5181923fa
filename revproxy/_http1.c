/* A node's response head and a client's request head parsed in C for revproxy.http1.parse_response and
 * parse_request: the same Head, the same verdicts.
 *
 * configure(Head, keep_alive, parse_response, block_without, parse_request)
 *                                         once, from revproxy/http1.py: the Head class (its slots are filled
 *                                         directly), the shared {b"keep-alive"} frozenset, and the pure-Python
 *                                         functions this module hands what it does not decide
 * decide(data, method) -> Head | None     the common head decided here; None: "not mine" (the tests use it)
 * parse_response(data, method) -> Head    decide(), else the Python fallback (which also raises every HTTPError)
 * decide_request(data) -> Head | None    the same for a client's request head (revproxy/_http1_request.c)
 * parse_request(data) -> Head             decide_request(), else the Python parse_request (and its HTTPErrors)
 * block_without(head, drop) -> bytes      a response's block without the lines of the fields named in `drop`, in
 *                                         one pass (Python's for a Head whose names do not match its block)
 *
 * Why C: a profile of the proxy had parse_response at ~54k of ~325k instructions per request (a status-line
 * regex, a translate and a count over the block, lower(), a findall of the field names, a find per framing
 * field). Here it is one pass over the head that checks each byte once, writes the lowercase copy, and builds
 * the names list as it goes: 53k -> 8k instructions per call on nginx's head (callgrind). block_without (~11k
 * in Python there, a set intersection and finds) walks the lines with memchr against the head's names: ~4k.
 *
 * What is decided here: a status line "HTTP/1.x ddd[ reason]", header lines "\r\n" token ":" value with no
 * control byte but HTAB, at most one Content-Length (digits only, at most 18 when it frames the body), at most
 * one Transfer-Encoding, at most one Connection, any Upgrade. Everything else (any refused head, obs-fold, two
 * Content-Length or Connection lines, a Content-Length "5, 5", arguments that are not bytes) goes to the Python
 * implementation, which stays the reference: simple C is the safe C, and every error message comes from Python.
 * Every index is checked against the length; nothing is copied into a fixed buffer.
 */
#include "_http1.h"

#include <structmember.h>

PyObject *head_type;          /* revproxy.http1.Head */
static PyObject *keep_alive;  /* http1._KEEP_ALIVE, the shared frozenset({b"keep-alive"}) */
static PyObject *fallback;    /* the pure-Python parse_response */
static PyObject *fallback_without;  /* the pure-Python block_without */
static PyObject *fallback_request;  /* the pure-Python parse_request */
PyObject *version_11, *version_10, *empty_frozenset;

static const char *const slot_names[S_COUNT] = {"block", "clean_length", "connection", "fields", "framing", "length",
                                                "lower", "method", "names", "reason", "status", "target", "upgrade",
                                                "version"};
Py_ssize_t slot_offset[S_COUNT];
unsigned char token_char[256];
unsigned char value_bad[256];

static void init_tables(void) {
    const char *t = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (; *t; t++)
        token_char[(unsigned char)*t] = 1;
    for (int c = 0; c < 0x20; c++)
        value_bad[c] = c != 0x09;
    value_bad[0x7f] = 1;
}

/* name[0:n] (any case) equals the lowercase `word` of length m */
static inline int name_is(const unsigned char *name, Py_ssize_t n, const char *word, Py_ssize_t m) {
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower_ascii(name[i]) != (unsigned char)word[i])
            return 0;
    return 1;
}

/* frozenset of the comma-separated tokens of `v`, each stripped and lowercased (empty ones kept, as in Python) */
PyObject *connection_tokens(const unsigned char *p, Span v) {
    PyObject *set = PySet_New(NULL);
    if (set == NULL)
        return NULL;
    Py_ssize_t at = v.start;
    for (;;) {
        Py_ssize_t end = at;
        while (end < v.end && p[end] != ',')
            end++;
        Py_ssize_t a = at, b = end;
        while (a < b && is_space(p[a]))
            a++;
        while (b > a && is_space(p[b - 1]))
            b--;
        PyObject *token = PyBytes_FromStringAndSize(NULL, b - a);
        if (token == NULL)
            goto error;
        unsigned char *w = (unsigned char *)PyBytes_AS_STRING(token);
        for (Py_ssize_t i = a; i < b; i++)
            w[i - a] = lower_ascii(p[i]);
        int failed = PySet_Add(set, token);
        Py_DECREF(token);
        if (failed)
            goto error;
        if (end >= v.end)
            break;
        at = end + 1;
    }
    PyObject *frozen = PyFrozenSet_New(set);
    Py_DECREF(set);
    return frozen;
error:
    Py_DECREF(set);
    return NULL;
}

/* The transfer coding a Transfer-Encoding value ends with is "chunked" (case-insensitive, whitespace stripped) */
static int ends_chunked(const unsigned char *p, Span v) {
    Py_ssize_t a = v.start, b = v.end;
    for (Py_ssize_t i = v.end; i > v.start; i--)
        if (p[i - 1] == ',') {
            a = i;
            break;
        }
    while (a < b && is_space(p[a]))
        a++;
    while (b > a && is_space(p[b - 1]))
        b--;
    return name_is(p + a, b - a, "chunked", 7);
}

/* A new Head with every slot set from `values` (references stolen). A NULL among them (a failed allocation, its
 * exception set) releases the others and returns NULL, so callers fill the array without checking each. */
PyObject *new_head(PyObject *values[S_COUNT]) {
    PyTypeObject *type = (PyTypeObject *)head_type;
    int missing = 0;
    for (int i = 0; i < S_COUNT; i++)
        missing |= values[i] == NULL;
    PyObject *head = missing ? NULL : type->tp_alloc(type, 0);
    if (head == NULL) {
        for (int i = 0; i < S_COUNT; i++)
            Py_XDECREF(values[i]);
        return NULL;
    }
    for (int i = 0; i < S_COUNT; i++)
        *(PyObject **)((char *)head + slot_offset[i]) = values[i];
    return head;
}

/* Head for the common head, NULL without an exception for "not mine", NULL with one for an error */
static PyObject *decide(PyObject *data, PyObject *method) {
    if (head_type == NULL || !PyBytes_CheckExact(data) || !PyBytes_CheckExact(method))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);

    /* status line: HTTP/1.x SP 3DIGIT [SP reason], up to the first CRLF or the end */
    Py_ssize_t eol = 0;
    while (eol < n && !(p[eol] == '\r' && eol + 1 < n && p[eol + 1] == '\n'))
        eol++;
    if (eol < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
        return NULL;
    for (int i = 9; i < 12; i++)
        if (p[i] < '0' || p[i] > '9')
            return NULL;
    Span reason = {12, 12};
    if (eol > 12) {
        if (p[12] != ' ')
            return NULL;
        reason.start = 13;
        reason.end = eol;
        for (Py_ssize_t i = 13; i < eol; i++)
            if (value_bad[p[i]])
                return NULL;
    }
    long status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');

    /* the header block: "\r\n" token ":" value per line, checked, lowercased and its names listed in one pass */
    Py_ssize_t blen = n - eol;  /* (0 when there is no CRLF: eol == n) */
    PyObject *lower = PyBytes_FromStringAndSize(NULL, blen);
    PyObject *names = PyList_New(0);
    if (lower == NULL || names == NULL)
        goto error;
    unsigned char *low = (unsigned char *)PyBytes_AS_STRING(lower) - eol;  /* low[i] for p[i], i >= eol */
    int lengths = 0, encodings = 0, connections = 0, upgrades = 0;
    Span length = {0, 0}, encoding = {0, 0}, connection = {0, 0}, upgrade = {0, 0};
    Py_ssize_t pos = eol;
    while (pos < n) {
        /* here p[pos] is the CR of a CRLF: the status line's, or the one the previous value stopped at */
        if (pos + 1 >= n || p[pos] != '\r' || p[pos + 1] != '\n')
            goto not_mine;
        low[pos] = '\r';
        low[pos + 1] = '\n';
        pos += 2;
        Py_ssize_t name = pos;
        while (pos < n && token_char[p[pos]]) {
            low[pos] = lower_ascii(p[pos]);
            pos++;
        }
        if (pos == name || pos >= n || p[pos] != ':')
            goto not_mine;
        Py_ssize_t name_end = pos;
        low[pos++] = ':';
        Py_ssize_t value = pos;
        while (pos < n && p[pos] != '\r') {
            if (value_bad[p[pos]])
                goto not_mine;
            low[pos] = lower_ascii(p[pos]);
            pos++;
        }
        Span v = trimmed(p, value, pos);
        PyObject *lname = PyBytes_FromStringAndSize((const char *)low + name, name_end - name);
        if (lname == NULL)
            goto error;
        int failed = PyList_Append(names, lname);
        Py_DECREF(lname);
        if (failed)
            goto error;
        const unsigned char *ln = low + name;
        Py_ssize_t len = name_end - name;
        if (len == 14 && memcmp(ln, "content-length", 14) == 0) {
            lengths++;
            length = v;
        } else if (len == 17 && memcmp(ln, "transfer-encoding", 17) == 0) {
            encodings++;
            encoding = v;
        } else if (len == 10 && memcmp(ln, "connection", 10) == 0) {
            connections++;
            connection = v;
        } else if (len == 7 && memcmp(ln, "upgrade", 7) == 0) {
            upgrades++;
            upgrade = v;  /* (the last one, as Python takes it) */
        }
    }
    if (lengths > 1 || encodings > 1 || connections > 1)
        goto not_mine;

    int clean_length = lengths == 1 && length.end > length.start;
    for (Py_ssize_t i = length.start; clean_length && i < length.end; i++)
        if (p[i] < '0' || p[i] > '9')
            clean_length = 0;
    int framing;
    long long body_length = 0;
    if ((PyBytes_GET_SIZE(method) == 4 && memcmp(PyBytes_AS_STRING(method), "HEAD", 4) == 0) || status < 200 ||
        status == 204 || status == 304) {
        framing = NONE;
    } else if (encodings) {
        framing = ends_chunked(p, encoding) ? CHUNKED : UNTIL_CLOSE;
    } else if (lengths) {
        if (!clean_length || length.end - length.start > 18)
            goto not_mine;  /* (Python's _content_length: a list "5, 5", or an error) */
        for (Py_ssize_t i = length.start; i < length.end; i++)
            body_length = body_length * 10 + (p[i] - '0');
        framing = body_length ? LENGTH : NONE;
    } else {
        framing = UNTIL_CLOSE;
    }

    PyObject *v[S_COUNT] = {NULL};
    if (connections) {
        static const char ka[] = "keep-alive";
        if (connection.end - connection.start == 10 && memcmp(p + connection.start, ka, 10) == 0) {
            Py_INCREF(keep_alive);
            v[S_CONNECTION] = keep_alive;
        } else {
            v[S_CONNECTION] = connection_tokens(p, connection);
        }
    } else {
        Py_INCREF(empty_frozenset);
        v[S_CONNECTION] = empty_frozenset;
    }
    v[S_BLOCK] = PyBytes_FromStringAndSize((const char *)p + eol, blen);
    v[S_CLEAN_LENGTH] = PyBool_FromLong(clean_length);
    v[S_FIELDS] = PyList_New(0);
    v[S_FRAMING] = PyLong_FromLong(framing);
    v[S_LENGTH] = PyLong_FromLongLong(body_length);
    v[S_LOWER] = lower;
    v[S_METHOD] = PyBytes_FromStringAndSize(NULL, 0);
    v[S_NAMES] = names;
    v[S_REASON] = PyBytes_FromStringAndSize((const char *)p + reason.start, reason.end - reason.start);
    v[S_STATUS] = PyLong_FromLong(status);
    v[S_TARGET] = PyBytes_FromStringAndSize(NULL, 0);
    v[S_UPGRADE] = upgrades ? PyBytes_FromStringAndSize((const char *)p + upgrade.start, upgrade.end - upgrade.start)
                            : PyBytes_FromStringAndSize(NULL, 0);
    v[S_VERSION] = p[7] == '1' ? version_11 : version_10;
    Py_INCREF(v[S_VERSION]);
    return new_head(v);

not_mine:
    Py_XDECREF(lower);
    Py_XDECREF(names);
    return NULL;
error:
    Py_XDECREF(lower);
    Py_XDECREF(names);
    if (!PyErr_Occurred())
        PyErr_NoMemory();
    return NULL;
}

/* A response Head's block without the lines whose (lowercase) name is in `drop`; NULL without an exception when
 * the head is not one parse_response made (its names do not match its block's lines line by line): Python's. */
static PyObject *without(PyObject *head, PyObject *drop) {
    if (head_type == NULL || !Py_IS_TYPE(head, (PyTypeObject *)head_type) || !PyAnySet_Check(drop))
        return NULL;
    PyObject *names = *(PyObject **)((char *)head + slot_offset[S_NAMES]);
    PyObject *block = *(PyObject **)((char *)head + slot_offset[S_BLOCK]);
    if (names == NULL || block == NULL || !PyList_CheckExact(names) || !PyBytes_CheckExact(block))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(names), dropped = 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(block);
    Py_ssize_t n = PyBytes_GET_SIZE(block);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    Py_ssize_t size = 0, pos = 0, line = 0;
    while (pos < n) {
        /* a line: CRLF name ":" value, up to the next CRLF or the end; its name must be names[line] */
        if (line >= count || pos + 1 >= n || p[pos] != '\r' || p[pos + 1] != '\n')
            goto not_mine;
        Py_ssize_t end = pos + 2;
        for (;;) {  /* (memchr for the CR: a vectorised scan, where a loop would test every byte) */
            const unsigned char *cr = memchr(p + end, '\r', (size_t)(n - end));
            end = cr == NULL ? n : cr - p;
            if (end >= n || (end + 1 < n && p[end + 1] == '\n'))
                break;
            end++;
        }
        PyObject *name = PyList_GET_ITEM(names, line);
        if (!PyBytes_CheckExact(name))
            goto not_mine;
        Py_ssize_t len = PyBytes_GET_SIZE(name);
        const unsigned char *ln = (const unsigned char *)PyBytes_AS_STRING(name);
        if (len == 0 || pos + 2 + len >= end || p[pos + 2 + len] != ':')
            goto not_mine;
        for (Py_ssize_t i = 0; i < len; i++)
            if (lower_ascii(p[pos + 2 + i]) != ln[i])
                goto not_mine;
        int in = PySet_Contains(drop, name);
        if (in < 0) {
            Py_DECREF(out);
            return NULL;
        }
        if (!in) {
            memcpy(w + size, p + pos, (size_t)(end - pos));
            size += end - pos;
        } else {
            dropped++;
        }
        pos = end;
        line++;
    }
    if (line != count)
        goto not_mine;
    if (!dropped) {  /* the block as sent (the same object, as Python returns it) */
        Py_DECREF(out);
        Py_INCREF(block);
        return block;
    }
    if (_PyBytes_Resize(&out, size) < 0)
        return NULL;
    return out;
not_mine:
    Py_DECREF(out);
    return NULL;
}

static PyObject *py_without(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "block_without(head, drop)");
        return NULL;
    }
    PyObject *block = without(args[0], args[1]);
    if (block != NULL || PyErr_Occurred())
        return block;
    if (fallback_without == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "revproxy._http1 is not configured");
        return NULL;
    }
    return PyObject_Vectorcall(fallback_without, args, nargs, NULL);
}

static PyObject *py_decide(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "decide(data, method)");
        return NULL;
    }
    PyObject *head = decide(args[0], args[1]);
    if (head == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return head;
}

static PyObject *py_parse_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_response(data, request_method)");
        return NULL;
    }
    PyObject *head = decide(args[0], args[1]);
    if (head != NULL || PyErr_Occurred())
        return head;
    if (fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "revproxy._http1 is not configured");
        return NULL;
    }
    return PyObject_Vectorcall(fallback, args, nargs, NULL);
}

static PyObject *py_decide_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "decide_request(data)");
        return NULL;
    }
    PyObject *head = decide_request(args[0]);
    if (head == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return head;
}

static PyObject *py_parse_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "parse_request(data)");
        return NULL;
    }
    PyObject *head = decide_request(args[0]);
    if (head != NULL || PyErr_Occurred())
        return head;
    if (fallback_request == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "revproxy._http1 is not configured");
        return NULL;
    }
    return PyObject_Vectorcall(fallback_request, args, nargs, NULL);
}

static PyObject *py_configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyType_Check(args[0]) || !PyFrozenSet_Check(args[1]) || !PyCallable_Check(args[2]) ||
        !PyCallable_Check(args[3]) || !PyCallable_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(Head, keep_alive, parse_response, block_without, parse_request)");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    Py_ssize_t offsets[S_COUNT];
    for (int i = 0; i < S_COUNT; i++) {
        /* each slot must be Head's own object member descriptor: its offset is where the value lives */
        PyObject *d = PyDict_GetItemString(type->tp_dict, slot_names[i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) || ((PyDescrObject *)d)->d_type != type ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "Head.%s is not a slot", slot_names[i]);
            return NULL;
        }
        offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    if (type->tp_dictoffset != 0 || type->tp_itemsize != 0 || type->tp_alloc == NULL) {
        PyErr_SetString(PyExc_TypeError, "Head must be a plain class with __slots__");
        return NULL;
    }
    memcpy(slot_offset, offsets, sizeof offsets);
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    Py_INCREF(args[2]);
    Py_INCREF(args[3]);
    Py_INCREF(args[4]);
    Py_XSETREF(fallback_request, args[4]);
    Py_XSETREF(fallback_without, args[3]);
    Py_XSETREF(head_type, args[0]);
    Py_XSETREF(keep_alive, args[1]);
    Py_XSETREF(fallback, args[2]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))py_configure, METH_FASTCALL,
     "configure(Head, keep_alive, parse_response, block_without): the Head class, the shared keep-alive set, "
     "the Python functions"},
    {"decide", (PyCFunction)(void (*)(void))py_decide, METH_FASTCALL,
     "decide(data, method) -> Head | None: the head when this module decides it, None to leave it to Python"},
    {"parse_response", (PyCFunction)(void (*)(void))py_parse_response, METH_FASTCALL,
     "parse_response(data, request_method) -> Head: as revproxy.http1's Python parse_response"},
    {"decide_request", (PyCFunction)(void (*)(void))py_decide_request, METH_FASTCALL,
     "decide_request(data) -> Head | None: the request head when this module decides it, None to leave it to Python"},
    {"parse_request", (PyCFunction)(void (*)(void))py_parse_request, METH_FASTCALL,
     "parse_request(data) -> Head: as revproxy.http1's Python parse_request"},
    {"block_without", (PyCFunction)(void (*)(void))py_without, METH_FASTCALL,
     "block_without(head, drop) -> bytes: as revproxy.http1's Python block_without"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "revproxy._http1", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__http1(void) {
    init_tables();
    version_11 = PyBytes_FromString("1.1");
    version_10 = PyBytes_FromString("1.0");
    empty_frozenset = PyFrozenSet_New(NULL);
    if (version_11 == NULL || version_10 == NULL || empty_frozenset == NULL)
        return NULL;
    return PyModule_Create(&module);
}
