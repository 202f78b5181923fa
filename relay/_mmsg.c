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
 * forward_clients(datagrams, start, clients, batch, socket_type) -> index
 * forward_peers(datagrams, start, allocation, batch, socket_type, destination_type) -> index
 *     The steady-state relaying of a burst `recv` returned, on the same Python objects the Python code uses
 *     (relay.shell.TurnUDPListener.datagramReceived with Allocation.on_client_channel_data, and
 *     Allocation.on_peer_datagram for a peer with a channel): from `start` on, each datagram that is plainly
 *     forwardable is queued on the batched socket it goes out of and counted on its allocation as the Python code
 *     would; at the first that is not (STUN, a Send indication, an unknown source, channel or peer, no permission,
 *     a short length, anything of an unexpected type) it stops and returns that datagram's index, which the caller
 *     hands to the Python handler before calling again: the order of effects is the order of datagrams.
 *     len(datagrams) when all went. Why C: a profile of a worker relaying ChannelData had a quarter of its CPU in
 *     the interpreter, most of it this path (a handler, two method calls, a dozen attribute look-ups per datagram).
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

static PyObject *mmsg_send(PyObject *self, PyObject *args) {
    int fd, family;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "iiO!", &fd, &family, &PyList_Type, &items)) return NULL;
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
        return NULL;
    }
    return PyLong_FromSsize_t(failed);
}

/* --- forwarding (see the top of the file) --- */

static PyObject *s_channels, *s_permissions, *s_relay, *s_multiplexer, *s_queue, *s_pending, *s_active,
    *s_packets_from_client, *s_bytes_from_client, *s_packets_to_client, *s_bytes_to_client, *s_channel_of_peer,
    *s_send, *s_pad, *s_endpoint, *s_addr;

/* obj.name += delta, as Python's `+=` on an attribute does it. 0, or -1 with an error set. */
static int add_to(PyObject *obj, PyObject *name, Py_ssize_t delta) {
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL) return -1;
    PyObject *step = PyLong_FromSsize_t(delta);
    PyObject *sum = step ? PyNumber_InPlaceAdd(old, step) : NULL;
    Py_DECREF(old);
    Py_XDECREF(step);
    if (sum == NULL) return -1;
    int result = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return result;
}

/* The write queue of `endpoint` if it is a batched socket of `socket_type` inside an active batch: what its
 * write (DatagramSocket._queue) appends to. A new reference, or NULL: not such a socket (no error), or an error. */
static PyObject *batched_queue(PyObject *endpoint, PyObject *socket_type) {
    if ((PyObject *)Py_TYPE(endpoint) != socket_type) return NULL;
    PyObject *multiplexer = PyObject_GetAttr(endpoint, s_multiplexer);
    if (multiplexer == NULL) return NULL;
    int batched = multiplexer != Py_None;
    Py_DECREF(multiplexer);
    if (!batched) return NULL;
    PyObject *queue = PyObject_GetAttr(endpoint, s_queue);
    if (queue != NULL && !PyList_CheckExact(queue)) Py_CLEAR(queue);
    return queue;
}

/* DatagramSocket._queue(data, addr) inside an active batch: the first datagram puts the socket on the pending
 * list. Steals neither reference. 0, or -1 with an error set. */
static int enqueue(PyObject *queue, PyObject *endpoint, PyObject *pending, PyObject *data, PyObject *addr) {
    if (PyList_GET_SIZE(queue) == 0 && PyList_Append(pending, endpoint) < 0) return -1;
    PyObject *item = PyTuple_Pack(2, data, addr);
    if (item == NULL) return -1;
    int result = PyList_Append(queue, item);
    Py_DECREF(item);
    return result;
}

/* The batch's pending list if the batch is active (as DatagramSocket._queue checks): a new reference, or NULL
 * (not active, not a list: no error; or an error). */
static PyObject *active_pending(PyObject *batch) {
    PyObject *active = PyObject_GetAttr(batch, s_active);
    if (active == NULL) return NULL;
    int is_active = active == Py_True;
    Py_DECREF(active);
    if (!is_active) return NULL;
    PyObject *pending = PyObject_GetAttr(batch, s_pending);
    if (pending != NULL && !PyList_CheckExact(pending)) Py_CLEAR(pending);
    return pending;
}

/* datagrams[i] as (data, addr) borrowed, if it is a (bytes, tuple) pair as `recv` makes them. */
static int datagram_at(PyObject *datagrams, Py_ssize_t i, PyObject **data, PyObject **addr) {
    PyObject *item = PyList_GET_ITEM(datagrams, i);
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) return 0;
    *data = PyTuple_GET_ITEM(item, 0);
    *addr = PyTuple_GET_ITEM(item, 1);
    return PyBytes_CheckExact(*data) && PyTuple_CheckExact(*addr) && PyTuple_GET_SIZE(*addr) >= 1;
}

/* A borrowed dict attribute of obj (held by obj, which the caller holds), or NULL (no error if merely absent or
 * not exactly a dict). */
static PyObject *dict_attr(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) PyErr_Clear();
        return NULL;
    }
    Py_DECREF(value);  /* obj keeps it alive: nothing in the loop runs Python code that could replace it */
    return PyDict_CheckExact(value) ? value : NULL;
}

/* One client ChannelData, as datagramReceived + Allocation.on_client_channel_data relay it. 1 queued and counted,
 * 0 not plainly forwardable (Python's), -1 error. */
static int forward_client(PyObject *data, PyObject *addr, PyObject *clients, PyObject *pending,
                          PyObject *socket_type) {
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < 4 || bytes[0] < 0x40 || bytes[0] > 0x7F) return 0;
    PyObject *allocation = PyDict_GetItemWithError(clients, addr);
    if (allocation == NULL) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(allocation);
    int result = 0;
    PyObject *number = NULL, *relay = NULL, *queue = NULL, *payload = NULL;
    PyObject *channels = dict_attr(allocation, s_channels);
    PyObject *permissions = channels ? dict_attr(allocation, s_permissions) : NULL;
    if (permissions == NULL) goto check;
    number = PyLong_FromLong(bytes[0] << 8 | bytes[1]);
    if (number == NULL) goto error;
    PyObject *peer = PyDict_GetItemWithError(channels, number);  /* borrowed */
    if (peer == NULL) goto check;
    if (!PyTuple_CheckExact(peer) || PyTuple_GET_SIZE(peer) < 1) goto done;
    int permitted = PyDict_Contains(permissions, PyTuple_GET_ITEM(peer, 0));
    if (permitted < 0) goto error;
    if (!permitted) goto done;
    Py_ssize_t length = bytes[2] << 8 | bytes[3];
    if (4 + length > size) goto done;  /* dropped and counted by the Python code */
    relay = PyObject_GetAttr(allocation, s_relay);
    if (relay == NULL) goto error;
    queue = batched_queue(relay, socket_type);
    if (queue == NULL) goto check;
    Py_INCREF(peer);  /* the tuple append below may not run Python code, but keep it ours while we use it */
    payload = PyBytes_FromStringAndSize((const char *)bytes + 4, length);
    if (payload == NULL || enqueue(queue, relay, pending, payload, peer) < 0 ||
        add_to(allocation, s_packets_from_client, 1) < 0 || add_to(allocation, s_bytes_from_client, length) < 0) {
        Py_DECREF(peer);
        goto error;
    }
    Py_DECREF(peer);
    result = 1;
    goto done;
check:
    result = PyErr_Occurred() ? -1 : 0;
    goto done;
error:
    result = -1;
done:
    Py_XDECREF(number);
    Py_XDECREF(relay);
    Py_XDECREF(queue);
    Py_XDECREF(payload);
    Py_DECREF(allocation);
    return result;
}

static PyObject *mmsg_forward_clients(PyObject *self, PyObject *args) {
    PyObject *datagrams, *clients, *batch, *socket_type;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!nO!OO", &PyList_Type, &datagrams, &start, &PyDict_Type, &clients, &batch,
                          &socket_type))
        return NULL;
    PyObject *pending = active_pending(batch);
    if (pending == NULL) return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(start);
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PyList_GET_SIZE(datagrams); i++) {
        PyObject *data, *addr;
        if (!datagram_at(datagrams, i, &data, &addr)) break;
        int forwarded = forward_client(data, addr, clients, pending, socket_type);
        if (forwarded < 0) {
            Py_DECREF(pending);
            return NULL;
        }
        if (!forwarded) break;
    }
    Py_DECREF(pending);
    return PyLong_FromSsize_t(i);
}

/* One peer datagram, as Allocation.on_peer_datagram sends it to a client with a channel to that peer. 1 queued and
 * counted, 0 not plainly forwardable, -1 error. */
static int forward_peer(PyObject *data, PyObject *peer, PyObject *allocation, PyObject *permissions,
                        PyObject *channel_of_peer, int pad, PyObject *queue, PyObject *endpoint, PyObject *reply_to,
                        PyObject *pending) {
    int permitted = PyDict_Contains(permissions, PyTuple_GET_ITEM(peer, 0));
    if (permitted <= 0) return permitted;
    PyObject *number = PyDict_GetItemWithError(channel_of_peer, peer);
    if (number == NULL) return PyErr_Occurred() ? -1 : 0;
    long channel = PyLong_Check(number) ? PyLong_AsLong(number) : -1;
    if (channel < 0 || channel > 0xFFFF) return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    if (length > 0xFFFF) return 0;  /* encode_channel_data's struct.pack would raise: Python's to report */
    Py_ssize_t padding = pad && length % 4 ? 4 - length % 4 : 0;  /* RFC 5766 11.5, as encode_channel_data */
    PyObject *out = PyBytes_FromStringAndSize(NULL, 4 + length + padding);
    if (out == NULL) return -1;
    unsigned char *bytes = (unsigned char *)PyBytes_AS_STRING(out);
    bytes[0] = (unsigned char)(channel >> 8);
    bytes[1] = (unsigned char)channel;
    bytes[2] = (unsigned char)(length >> 8);
    bytes[3] = (unsigned char)length;
    memcpy(bytes + 4, PyBytes_AS_STRING(data), (size_t)length);
    memset(bytes + 4 + length, 0, (size_t)padding);
    int result = enqueue(queue, endpoint, pending, out, reply_to);
    Py_DECREF(out);
    if (result < 0 || add_to(allocation, s_packets_to_client, 1) < 0 ||
        add_to(allocation, s_bytes_to_client, length) < 0)
        return -1;
    return 1;
}

static PyObject *mmsg_forward_peers(PyObject *self, PyObject *args) {
    PyObject *datagrams, *allocation, *batch, *socket_type, *destination_type;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!nOOOO", &PyList_Type, &datagrams, &start, &allocation, &batch, &socket_type,
                          &destination_type))
        return NULL;
    Py_ssize_t i = start < 0 ? 0 : start;
    int failed = 0;  /* an error while forwarding one (not merely unexpected objects up front): raised */
    PyObject *pending = NULL, *send = NULL, *endpoint = NULL, *reply_to = NULL, *queue = NULL, *pad = NULL;
    PyObject *permissions = dict_attr(allocation, s_permissions);
    PyObject *channel_of_peer = permissions ? dict_attr(allocation, s_channel_of_peer) : NULL;
    if (channel_of_peer == NULL) goto done;
    /* The allocation's `send` must be a Destination (a UDP client through a batched listener), else Python. */
    send = PyObject_GetAttr(allocation, s_send);
    if (send == NULL || (PyObject *)Py_TYPE(send) != destination_type) goto done;
    endpoint = PyObject_GetAttr(send, s_endpoint);
    reply_to = endpoint ? PyObject_GetAttr(send, s_addr) : NULL;
    queue = reply_to ? batched_queue(endpoint, socket_type) : NULL;
    pad = queue ? PyObject_GetAttr(allocation, s_pad) : NULL;
    pending = pad ? active_pending(batch) : NULL;
    if (pending == NULL) goto done;
    int padded = PyObject_IsTrue(pad);
    if (padded < 0) goto done;
    for (; i < PyList_GET_SIZE(datagrams); i++) {
        PyObject *data, *peer;
        if (!datagram_at(datagrams, i, &data, &peer)) break;
        int forwarded = forward_peer(data, peer, allocation, permissions, channel_of_peer, padded, queue, endpoint,
                                     reply_to, pending);
        if (forwarded < 0) failed = 1;
        if (forwarded <= 0) break;
    }
done:
    Py_XDECREF(pending);
    Py_XDECREF(send);
    Py_XDECREF(endpoint);
    Py_XDECREF(reply_to);
    Py_XDECREF(queue);
    Py_XDECREF(pad);
    if (PyErr_Occurred()) {
        if (failed || !PyErr_ExceptionMatches(PyExc_AttributeError)) return NULL;
        PyErr_Clear();  /* not the objects this expects: every datagram from here is Python's */
    }
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"recv", mmsg_recv, METH_VARARGS, "recv(fd, count) -> [(bytes, (host, port)), ...] via recvmmsg(2)"},
    {"send", mmsg_send, METH_VARARGS,
     "send(fd, family, [(data, (host, port)), ...]) -> datagrams not sent, via sendmmsg(2)"},
    {"forward_clients", mmsg_forward_clients, METH_VARARGS,
     "forward_clients(datagrams, start, clients, batch, socket_type) -> index of the first not forwarded"},
    {"forward_peers", mmsg_forward_peers, METH_VARARGS,
     "forward_peers(datagrams, start, allocation, batch, socket_type, destination_type) -> index of the first "
     "not forwarded"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay._mmsg", "recvmmsg/sendmmsg for the relay's UDP sockets (Linux).", -1, methods,
};

PyMODINIT_FUNC PyInit__mmsg(void) {
    struct { PyObject **slot; const char *name; } names[] = {
        {&s_channels, "channels"}, {&s_permissions, "permissions"}, {&s_relay, "relay"},
        {&s_multiplexer, "multiplexer"}, {&s_queue, "queue"}, {&s_pending, "pending"}, {&s_active, "active"},
        {&s_packets_from_client, "packets_from_client"}, {&s_bytes_from_client, "bytes_from_client"},
        {&s_packets_to_client, "packets_to_client"}, {&s_bytes_to_client, "bytes_to_client"},
        {&s_channel_of_peer, "channel_of_peer"}, {&s_send, "send"}, {&s_pad, "pad"}, {&s_endpoint, "endpoint"},
        {&s_addr, "addr"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
