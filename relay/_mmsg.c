/* Batched UDP I/O for the relay's datagram sockets (relay.datagram): recvmmsg(2) and sendmmsg(2), Linux only.
 *
 * recv(fd, count) -> [(bytes, (host, port)), ...]   up to `count` datagrams in one system call, [] when none
 * send(fd, family, [(data, (host, port)), ...]) -> int   every datagram in as few calls as the kernel takes;
 *                                                         returns how many were not sent (full buffer, ICMP error
 *                                                         pending, an address the socket cannot reach)
 *
 * Why C: per relayed datagram the relay made two system calls from Python (recvfrom, sendto); this makes one per
 * burst each way. Addresses are Python's own forms (IPv6 without flowinfo/scope, as the relay uses them). A
 * small cache maps a sender's sockaddr to the same (host, port) tuple object, so a client's datagrams hash and
 * compare as one key and no string is formatted per datagram; on send, the last destination object's sockaddr is
 * reused while it repeats (a burst to one client or one peer).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64
#define MAX_DATAGRAM 65536
#define ADDRESS_CACHE 256

typedef struct {
    struct sockaddr_storage key;
    socklen_t len;
    PyObject *tuple;  /* (host, port), owned */
} cached_address;

static char *buffers;  /* MAX_BATCH * MAX_DATAGRAM bytes, allocated once; only touched pages become resident */
static cached_address cache[ADDRESS_CACHE];

static unsigned slot_of(const struct sockaddr_storage *sa) {
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        return (in4->sin_addr.s_addr * 2654435761u ^ in4->sin_port * 40503u) % ADDRESS_CACHE;
    }
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    unsigned h = in6->sin6_port * 40503u;
    for (int i = 0; i < 16; i++) h = h * 31 + in6->sin6_addr.s6_addr[i];
    return h % ADDRESS_CACHE;
}

static PyObject *address_tuple(const struct sockaddr_storage *sa, socklen_t len) {
    unsigned slot = slot_of(sa);
    cached_address *entry = &cache[slot];
    size_t size = sa->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (entry->tuple != NULL && entry->len == len && memcmp(&entry->key, sa, size) == 0) {
        Py_INCREF(entry->tuple);
        return entry->tuple;
    }
    char host[INET6_ADDRSTRLEN];
    int port;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
        port = ntohs(in4->sin_port);
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    } else {
        PyErr_SetString(PyExc_OSError, "datagram from an address that is neither IPv4 nor IPv6");
        return NULL;
    }
    PyObject *tuple = Py_BuildValue("(si)", host, port);
    if (tuple == NULL) return NULL;
    Py_XDECREF(entry->tuple);
    memset(&entry->key, 0, sizeof(entry->key));
    memcpy(&entry->key, sa, size);
    entry->len = len;
    entry->tuple = tuple;
    Py_INCREF(tuple);
    return tuple;
}

static PyObject *mmsg_recv(PyObject *self, PyObject *args) {
    int fd, count;
    if (!PyArg_ParseTuple(args, "ii", &fd, &count)) return NULL;
    if (count < 1) count = 1;
    if (count > MAX_BATCH) count = MAX_BATCH;
    if (buffers == NULL) {
        buffers = PyMem_RawMalloc((size_t)MAX_BATCH * MAX_DATAGRAM);
        if (buffers == NULL) return PyErr_NoMemory();
    }
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_storage addresses[MAX_BATCH];
    for (int i = 0; i < count; i++) {
        vectors[i].iov_base = buffers + (size_t)i * MAX_DATAGRAM;
        vectors[i].iov_len = MAX_DATAGRAM;
        memset(&messages[i].msg_hdr, 0, sizeof(messages[i].msg_hdr));
        messages[i].msg_hdr.msg_name = &addresses[i];
        messages[i].msg_hdr.msg_namelen = sizeof(addresses[i]);
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    int received;
    /* The GIL stays held: the call never blocks (MSG_DONTWAIT), and `buffers` and the address cache are shared. */
    do {
        received = recvmmsg(fd, messages, (unsigned)count, MSG_DONTWAIT, NULL);
    } while (received < 0 && errno == EINTR);
    if (received < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(received);
    if (out == NULL) return NULL;
    for (int i = 0; i < received; i++) {
        PyObject *data = PyBytes_FromStringAndSize(vectors[i].iov_base, messages[i].msg_len);
        PyObject *address = data ? address_tuple(&addresses[i], messages[i].msg_hdr.msg_namelen) : NULL;
        PyObject *item = address ? PyTuple_Pack(2, data, address) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(address);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

/* (host, port) -> sockaddr; family is the socket's. 0 on success, -1 with a Python error set. */
static int parse_address(PyObject *address, int family, struct sockaddr_storage *sa, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(address, 0));
    if (host == NULL) return -1;
    port = (int)PyLong_AsLong(PyTuple_GET_ITEM(address, 1));
    if (port == -1 && PyErr_Occurred()) return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OSError, "port must be 0-65535");  /* that one datagram fails, as with sendto */
        return -1;
    }
    memset(sa, 0, sizeof(*sa));
    if (family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in4->sin_addr) != 1) goto bad;
        *len = sizeof(*in4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) {
            /* an IPv4 destination on a dual-stack socket, as sendto() would take it: ::ffff:a.b.c.d */
            struct in_addr v4;
            if (inet_pton(AF_INET, host, &v4) != 1) goto bad;
            in6->sin6_addr.s6_addr[10] = 0xff;
            in6->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&in6->sin6_addr.s6_addr[12], &v4, 4);
        }
        *len = sizeof(*in6);
    }
    return 0;
bad:
    PyErr_Format(PyExc_OSError, "not a numeric address for this socket: %s", host);
    return -1;
}

static PyObject *mmsg_send(PyObject *self, PyObject *args) {
    int fd, family;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &items)) return NULL;
    Py_ssize_t total = PyList_GET_SIZE(items);
    Py_ssize_t failed = 0;
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_storage addresses[MAX_BATCH];
    Py_buffer views[MAX_BATCH];
    for (Py_ssize_t start = 0; start < total; start += MAX_BATCH) {
        int n = (int)(total - start < MAX_BATCH ? total - start : MAX_BATCH);
        int held = 0;  /* messages[0..held) are filled, views[0..held) held */
        PyObject *last = NULL;
        for (int i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(items, start + i);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                PyErr_SetString(PyExc_TypeError, "items must be (data, (host, port)) tuples");
                goto error;
            }
            PyObject *address = PyTuple_GET_ITEM(item, 1);
            memset(&messages[held].msg_hdr, 0, sizeof(messages[held].msg_hdr));
            if (address == last) {
                addresses[held] = addresses[held - 1];
                messages[held].msg_hdr.msg_namelen = messages[held - 1].msg_hdr.msg_namelen;
            } else {
                socklen_t len;
                if (parse_address(address, family, &addresses[held], &len) < 0) {
                    if (!PyErr_ExceptionMatches(PyExc_OSError)) goto error;
                    PyErr_Clear();  /* an address this socket cannot reach: that one datagram fails, as sendto's */
                    failed += 1;
                    last = NULL;
                    continue;
                }
                messages[held].msg_hdr.msg_namelen = len;
                last = address;
            }
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[held], PyBUF_SIMPLE) < 0) goto error;
            vectors[held].iov_base = views[held].buf;
            vectors[held].iov_len = (size_t)views[held].len;
            messages[held].msg_hdr.msg_name = &addresses[held];
            messages[held].msg_hdr.msg_iov = &vectors[held];
            messages[held].msg_hdr.msg_iovlen = 1;
            held++;
        }
        n = held;
        int done = 0;
        while (done < n) {  /* never blocks (MSG_DONTWAIT): the GIL stays held */
            int sent = sendmmsg(fd, messages + done, (unsigned)(n - done), MSG_DONTWAIT);
            if (sent > 0) {
                done += sent;
            } else if (sent < 0 && errno == EINTR) {
                continue;
            } else if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
                failed += n - done;  /* the send buffer is full: the rest is dropped, as a router would */
                break;
            } else {
                failed += 1;  /* this one datagram failed (ICMP error pending, too big): skip it */
                done += 1;
            }
        }
        for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
        continue;
    error:
        for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
        return NULL;
    }
    return PyLong_FromSsize_t(failed);
}

static PyMethodDef methods[] = {
    {"recv", mmsg_recv, METH_VARARGS, "recv(fd, count) -> [(bytes, (host, port)), ...] via recvmmsg(2)"},
    {"send", mmsg_send, METH_VARARGS,
     "send(fd, family, [(data, (host, port)), ...]) -> datagrams not sent, via sendmmsg(2)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay._mmsg", "recvmmsg/sendmmsg for the relay's UDP sockets (Linux).", -1, methods,
};

PyMODINIT_FUNC PyInit__mmsg(void) {
    return PyModule_Create(&module);
}
