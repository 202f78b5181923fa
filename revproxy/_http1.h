/* What revproxy/_http1.c (the module, the response half) and revproxy/_http1_request.c (the request half) share:
 * the two halves of one extension module, revproxy._http1. */
#ifndef REVPROXY_HTTP1_H
#define REVPROXY_HTTP1_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

enum { NONE = 0, LENGTH = 1, CHUNKED = 2, UNTIL_CLOSE = 3 };  /* http1's body framing kinds */

/* Head's slots, as offsets into the instance (read from its member descriptors in configure) */
enum { S_BLOCK, S_CLEAN_LENGTH, S_CONNECTION, S_FIELDS, S_FRAMING, S_LENGTH, S_LOWER, S_METHOD, S_NAMES, S_REASON,
       S_STATUS, S_TARGET, S_UPGRADE, S_VERSION, S_COUNT };

extern PyObject *head_type;  /* revproxy.http1.Head, NULL until configure() */
extern PyObject *version_11, *version_10, *empty_frozenset;
extern Py_ssize_t slot_offset[S_COUNT];
extern unsigned char token_char[256];  /* RFC 9110 tchar */
extern unsigned char value_bad[256];   /* refused in a field value or reason: C0 controls but HTAB, and DEL */

static inline unsigned char lower_ascii(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 0x20) : c;
}

/* bytes.strip() of what a checked value can hold (SP, HTAB; CR, LF, VT, FF never get this far) */
static inline int is_space(unsigned char c) { return c == ' ' || c == '\t'; }

typedef struct { Py_ssize_t start, end; } Span;

/* p[start:end] without the spaces and tabs around it (a field value, as Python's strip(b" \t")) */
static inline Span trimmed(const unsigned char *p, Py_ssize_t start, Py_ssize_t end) {
    while (start < end && is_space(p[start]))
        start++;
    while (end > start && is_space(p[end - 1]))
        end--;
    return (Span){start, end};
}

/* frozenset of the comma-separated tokens of `v`, each stripped and lowercased (empty ones kept, as in Python) */
PyObject *connection_tokens(const unsigned char *p, Span v);
/* A new Head with every slot set from `values` (references stolen, all non-NULL) */
PyObject *new_head(PyObject *values[S_COUNT]);
/* revproxy/_http1_request.c: the request Head, NULL without an exception for "not mine", with one for an error */
PyObject *decide_request(PyObject *data);

#endif
