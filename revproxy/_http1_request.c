/* The request half of revproxy._http1 (revproxy/_http1.c has the module, the response half and what both share
 * through _http1.h): a client's request head decided in C for the plain common case, the rest left to Python.
 *
 * Why C: parse_request was ~21k of the proxy's ~272k instructions per request for wrk's "GET /path HTTP/1.1" and
 * Host (a split, translates, a partition, a lower() and a tuple per field, in Python): here one pass, ~4k.
 * Every index is checked against the length; nothing is copied into a fixed buffer. */
#include "_http1.h"

/* A client's request head, as http1.parse_request_python parses it, for the plain common case only: NULL without
 * an exception for "not mine" (Python decides, and raises every HTTPError), NULL with one for an error.
 * Decided here: "token SP /target SP HTTP/1.x" (the target visible ASCII but '#', starting with '/'; not CONNECT),
 * then lines "\r\n" token ":" value with no control byte but HTAB, among them at most one Host (exactly one for
 * HTTP/1.1) and at most one Connection. Any other Host count, any Content-Length, Transfer-Encoding or Upgrade
 * field, a bare CR or LF, an empty or odd line: Python's. */
PyObject *decide_request(PyObject *data) {
    if (head_type == NULL || !PyBytes_CheckExact(data))
        return NULL;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);

    /* request line */
    Py_ssize_t pos = 0;
    while (pos < n && token_char[p[pos]])
        pos++;
    Py_ssize_t method_end = pos;
    if (method_end == 0 || pos >= n || p[pos] != ' ')
        return NULL;
    if (method_end == 7 && memcmp(p, "CONNECT", 7) == 0)
        return NULL;
    Py_ssize_t target = ++pos;
    while (pos < n && p[pos] > 0x20 && p[pos] < 0x7f && p[pos] != '#')
        pos++;
    Py_ssize_t target_end = pos;
    if (target_end == target || p[target] != '/' || pos >= n || p[pos] != ' ')
        return NULL;
    pos++;
    if (n - pos < 8 || memcmp(p + pos, "HTTP/1.", 7) != 0 || (p[pos + 7] != '0' && p[pos + 7] != '1'))
        return NULL;
    int v11 = p[pos + 7] == '1';
    pos += 8;
    if (pos < n && (pos + 1 >= n || p[pos] != '\r' || p[pos + 1] != '\n'))
        return NULL;

    /* fields */
    PyObject *fields = PyList_New(0);
    if (fields == NULL)
        return NULL;
    int hosts = 0, connections = 0;
    Span connection = {0, 0};
    while (pos < n) {
        /* here p[pos] is the CR of a CRLF: the request line's, or the one the previous value stopped at */
        if (pos + 1 >= n || p[pos] != '\r' || p[pos + 1] != '\n')
            goto not_mine;
        pos += 2;
        Py_ssize_t name = pos;
        while (pos < n && token_char[p[pos]])
            pos++;
        if (pos == name || pos >= n || p[pos] != ':')
            goto not_mine;
        Py_ssize_t name_end = pos++;
        Py_ssize_t value = pos;
        while (pos < n && p[pos] != '\r') {
            if (value_bad[p[pos]])
                goto not_mine;
            pos++;
        }
        Span v = trimmed(p, value, pos);
        Py_ssize_t len = name_end - name;
        PyObject *lname = PyBytes_FromStringAndSize(NULL, len);
        if (lname == NULL)
            goto error;
        unsigned char *ln = (unsigned char *)PyBytes_AS_STRING(lname);
        for (Py_ssize_t i = 0; i < len; i++)
            ln[i] = lower_ascii(p[name + i]);
        if ((len == 14 && memcmp(ln, "content-length", 14) == 0) ||
            (len == 17 && memcmp(ln, "transfer-encoding", 17) == 0) || (len == 7 && memcmp(ln, "upgrade", 7) == 0)) {
            Py_DECREF(lname);
            goto not_mine;
        }
        if (len == 4 && memcmp(ln, "host", 4) == 0) {
            hosts++;
        } else if (len == 10 && memcmp(ln, "connection", 10) == 0) {
            connections++;
            connection = v;
        }
        PyObject *field = PyTuple_New(3);
        if (field == NULL) {
            Py_DECREF(lname);
            goto error;
        }
        PyTuple_SET_ITEM(field, 0, lname);  /* (stolen; the tuple owns each item from here) */
        PyObject *sent = PyBytes_FromStringAndSize((const char *)p + name, len);
        PyObject *val = PyBytes_FromStringAndSize((const char *)p + v.start, v.end - v.start);
        if (sent == NULL || val == NULL) {
            Py_XDECREF(sent);
            Py_XDECREF(val);
            Py_DECREF(field);
            goto error;
        }
        PyTuple_SET_ITEM(field, 1, sent);
        PyTuple_SET_ITEM(field, 2, val);
        int failed = PyList_Append(fields, field);
        Py_DECREF(field);
        if (failed)
            goto error;
    }
    if (hosts > 1 || (v11 && hosts == 0) || connections > 1)
        goto not_mine;

    PyObject *vals[S_COUNT] = {NULL};
    if (connections) {
        vals[S_CONNECTION] = connection_tokens(p, connection);
    } else {
        Py_INCREF(empty_frozenset);
        vals[S_CONNECTION] = empty_frozenset;
    }
    vals[S_BLOCK] = PyBytes_FromStringAndSize(NULL, 0);
    vals[S_CLEAN_LENGTH] = PyBool_FromLong(0);
    vals[S_FIELDS] = fields;
    fields = NULL;
    vals[S_FRAMING] = PyLong_FromLong(NONE);
    vals[S_LENGTH] = PyLong_FromLong(0);
    vals[S_LOWER] = PyBytes_FromStringAndSize(NULL, 0);
    vals[S_METHOD] = PyBytes_FromStringAndSize((const char *)p, method_end);
    vals[S_NAMES] = PyList_New(0);
    vals[S_REASON] = PyBytes_FromStringAndSize(NULL, 0);
    vals[S_STATUS] = PyLong_FromLong(0);
    vals[S_TARGET] = PyBytes_FromStringAndSize((const char *)p + target, target_end - target);
    vals[S_UPGRADE] = PyBytes_FromStringAndSize(NULL, 0);
    vals[S_VERSION] = v11 ? version_11 : version_10;
    Py_INCREF(vals[S_VERSION]);
    return new_head(vals);

not_mine:
    Py_DECREF(fields);
    return NULL;
error:
    Py_DECREF(fields);
    if (!PyErr_Occurred())
        PyErr_NoMemory();
    return NULL;
}
