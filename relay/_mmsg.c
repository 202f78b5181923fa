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
 * reused while it repeats (a burst to one client or one peer), and consecutive datagrams of one size to one
 * address go as one UDP GSO message (GSO_MAX_SEGMENT below): the kernel's per-packet path (route, skb, netfilter
 * hooks, the loopback or NIC hand-off) is taken once per run, which a profile had as most of sendmmsg's cost
 * (the in-process benchmark's send went from 4.2 to 1.2 µs per datagram). The datagrams that leave are the same.
 *
 * The relaying on the relay's Python objects (forward_clients, forward_peers, read, handle, flush) is in
 * relay/_mmsg_relay.c; this file is the system calls.
 */
#include "_mmsg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_DATAGRAM 65536
#define ADDRESS_CACHE 256
/* UDP GSO (UDP_SEGMENT, Linux 4.18): consecutive datagrams of one size (the last may be shorter) to one address go
 * down the stack as one message, which the kernel (or the NIC) cuts into those same datagrams at the end. Only for
 * segments that fit any path (IPv6's minimum MTU, 1280, less headers), at most 64 per message, under 64 KiB. */
#define GSO_MAX_SEGMENT 1200
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

typedef struct {
    struct sockaddr_storage key;
    socklen_t len;
    PyObject *tuple;  /* (host, port), owned */
} cached_address;

static char *buffers;  /* MAX_BATCH * MAX_DATAGRAM bytes, allocated once; only touched pages become resident */
static int gso_off;    /* the kernel or a device refused UDP GSO: one message per datagram from then on */
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

PyObject *mmsg_receive(int fd, int count) {
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

static PyObject *mmsg_recv(PyObject *self, PyObject *args) {
    int fd, count;
    if (!PyArg_ParseTuple(args, "ii", &fd, &count)) return NULL;
    return mmsg_receive(fd, count);
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

/* The datagrams of a GSO message that the kernel refused as one, each in its own sendmsg; how many failed. */
static Py_ssize_t send_each(int fd, const struct msghdr *run) {
    Py_ssize_t failed = 0;
    for (size_t k = 0; k < run->msg_iovlen; k++) {
        struct msghdr one;
        memset(&one, 0, sizeof(one));
        one.msg_name = run->msg_name;
        one.msg_namelen = run->msg_namelen;
        one.msg_iov = &run->msg_iov[k];
        one.msg_iovlen = 1;
        ssize_t sent;
        do {
            sent = sendmsg(fd, &one, MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS))
            return failed + (Py_ssize_t)(run->msg_iovlen - k);  /* the buffer is full: the rest is dropped */
        if (sent < 0) failed += 1;
    }
    return failed;
}

Py_ssize_t mmsg_send_items(int fd, int family, PyObject *items) {
    Py_ssize_t total = PyList_GET_SIZE(items);
    Py_ssize_t failed = 0;
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];  /* one per datagram; a GSO message spans several */
    struct sockaddr_storage addresses[MAX_BATCH];
    Py_buffer views[MAX_BATCH];
    size_t segment[MAX_BATCH], bytes[MAX_BATCH];  /* per message: its first datagram's size, its total */
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } controls[MAX_BATCH];
    for (Py_ssize_t start = 0; start < total; start += MAX_BATCH) {
        int n = (int)(total - start < MAX_BATCH ? total - start : MAX_BATCH);
        int held = 0;   /* vectors[0..held) are filled, views[0..held) held */
        int count = 0;  /* messages[0..count) are filled */
        int open = 0;   /* messages[count - 1] may take the next datagram to the same address */
        PyObject *last = NULL;
        for (int i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(items, start + i);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                PyErr_SetString(PyExc_TypeError, "items must be (data, (host, port)) tuples");
                goto error;
            }
            PyObject *address = PyTuple_GET_ITEM(item, 1);
            int same = address == last;
            socklen_t len = 0;
            if (!same) {
                if (parse_address(address, family, &addresses[count], &len) < 0) {
                    if (!PyErr_ExceptionMatches(PyExc_OSError)) goto error;
                    PyErr_Clear();  /* an address this socket cannot reach: that one datagram fails, as sendto's */
                    failed += 1;
                    last = NULL;
                    open = 0;
                    continue;
                }
                /* an equal address in another object (a Send indication's peer, each parsed anew) */
                same = last != NULL && len == messages[count - 1].msg_hdr.msg_namelen &&
                       memcmp(&addresses[count], &addresses[count - 1], len) == 0;
            }
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[held], PyBUF_SIMPLE) < 0) goto error;
            size_t size = (size_t)views[held].len;
            vectors[held].iov_base = views[held].buf;
            vectors[held].iov_len = size;
            held++;
            last = address;
            if (same && open && size > 0 && size <= segment[count - 1] &&
                bytes[count - 1] + size <= GSO_MAX_BYTES) {
                struct msghdr *run = &messages[count - 1].msg_hdr;  /* one more segment of this GSO message */
                run->msg_iovlen += 1;
                bytes[count - 1] += size;
                open = size == segment[count - 1] && run->msg_iovlen < GSO_MAX_SEGMENTS;  /* a shorter one ends it */
                continue;
            }
            struct msghdr *header = &messages[count].msg_hdr;
            memset(header, 0, sizeof(*header));
            if (same) {
                addresses[count] = addresses[count - 1];
                len = messages[count - 1].msg_hdr.msg_namelen;
            }
            header->msg_name = &addresses[count];
            header->msg_namelen = len;
            header->msg_iov = &vectors[held - 1];
            header->msg_iovlen = 1;
            segment[count] = bytes[count] = size;
            open = !gso_off && size > 0 && size <= GSO_MAX_SEGMENT;
            count++;
        }
        for (int m = 0; m < count; m++) {  /* the runs: one GSO message each, cut into datagrams by the kernel */
            struct msghdr *header = &messages[m].msg_hdr;
            if (header->msg_iovlen < 2) continue;
            header->msg_control = controls[m].buf;
            header->msg_controllen = sizeof(controls[m].buf);
            struct cmsghdr *control = CMSG_FIRSTHDR(header);
            control->cmsg_level = SOL_UDP;
            control->cmsg_type = UDP_SEGMENT;
            control->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t size = (uint16_t)segment[m];
            memcpy(CMSG_DATA(control), &size, sizeof(size));
        }
        int done = 0;
        while (done < count) {  /* never blocks (MSG_DONTWAIT): the GIL stays held */
            int sent = sendmmsg(fd, messages + done, (unsigned)(count - done), MSG_DONTWAIT);
            if (sent > 0) {
                done += sent;
            } else if (sent < 0 && errno == EINTR) {
                continue;
            } else if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
                for (; done < count; done++)  /* the send buffer is full: the rest is dropped, as a router would */
                    failed += (Py_ssize_t)messages[done].msg_hdr.msg_iovlen;
                break;
            } else if (messages[done].msg_hdr.msg_iovlen > 1) {
                /* The kernel would not take it as one (no UDP GSO here, a device without checksum offload, a path
                 * MTU below the segment, an ICMP error pending): each datagram on its own, as without GSO. */
                if (sent < 0 && (errno == EIO || errno == ENOPROTOOPT || errno == EOPNOTSUPP)) gso_off = 1;
                failed += send_each(fd, &messages[done].msg_hdr);
                done += 1;
            } else {
                failed += 1;  /* this one datagram failed (ICMP error pending, too big): skip it */
                done += 1;
            }
        }
        for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
        continue;
    error:
        for (int i = 0; i < held; i++) PyBuffer_Release(&views[i]);
        return -1;
    }
    return failed;
}

static PyObject *mmsg_send(PyObject *self, PyObject *args) {
    int fd, family;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &items)) return NULL;
    Py_ssize_t failed = mmsg_send_items(fd, family, items);
    return failed < 0 ? NULL : PyLong_FromSsize_t(failed);
}

static PyMethodDef methods[] = {
    {"recv", mmsg_recv, METH_VARARGS, "recv(fd, count) -> [(bytes, (host, port)), ...] via recvmmsg(2)"},
    {"send", mmsg_send, METH_VARARGS,
     "send(fd, family, [(data, (host, port)), ...]) -> datagrams not sent, via sendmmsg(2)"},
    {"forward_clients", mmsg_forward_clients, METH_VARARGS,
     "forward_clients(clients, batch, socket_type, datagrams, start) -> index of the first not forwarded"},
    {"forward_peers", mmsg_forward_peers, METH_VARARGS,
     "forward_peers(allocation, batch, socket_type, destination_type, datagrams, start) -> index of the first "
     "not forwarded"},
    {"handle", mmsg_handle, METH_VARARGS,
     "handle(endpoint, datagrams, failed) -> len(datagrams): relayed by endpoint.forward or handed to its handler"},
    {"read", mmsg_read, METH_VARARGS, "read(endpoint, failed) -> datagrams read (and handled) from endpoint.fd"},
    {"flush", mmsg_flush, METH_VARARGS, "flush(batch, failed): send every pending socket's queue"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay._mmsg", "recvmmsg/sendmmsg for the relay's UDP sockets (Linux).", -1, methods,
};

/* Whether this kernel has UDP GSO (Linux 4.18): an older one would ignore the UDP_SEGMENT control message and send
 * a run as one datagram, so it must not be asked. */
static int gso_supported(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0), size = 0;
    if (fd < 0) return 0;
    socklen_t length = sizeof(size);
    int known = getsockopt(fd, SOL_UDP, UDP_SEGMENT, &size, &length) == 0;
    close(fd);
    return known;
}

PyMODINIT_FUNC PyInit__mmsg(void) {
    if (mmsg_relay_init() < 0) return NULL;
    gso_off = !gso_supported();
    return PyModule_Create(&module);
}
